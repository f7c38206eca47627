"""The shipped SmolLM2 draft vocabulary on the real model (fp32, CPU; slow): lossless, τ kept, the sweep script runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beagle.assets.datasets import load_mt_bench
from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.tree import TreeSettings
from beagle.models.checkpoint import load_draft
from beagle.decoding.tree import CPU_TREE
from beagle.serving.demo import DEMO_VOCAB
from beagle.target_model.model import load_target

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm2():
    return load_target("smollm2", dtype="float32", device="cpu")


@pytest.mark.parametrize("name", ["smollm2-beagle", "smollm2-eagle2"])
def test_shipped_vocabulary_is_lossless_and_keeps_tau(smollm2, name):
    questions = load_mt_bench()[:2]
    settings = GenerationSettings(max_new_tokens=48)
    plain = SpeculativeGenerator(smollm2)
    full = load_draft(name, smollm2)
    subset = load_draft(name, smollm2).set_vocab(DEMO_VOCAB)
    tree = TreeSettings(**CPU_TREE)
    passes = {"full": 0, "subset": 0}
    for question in questions:
        prompt = smollm2.encode_chat([{"role": "user", "content": question["turns"][0]}])
        expected = plain.generate(prompt, settings).token_ids
        for label, draft in (("full", full), ("subset", subset)):
            out = SpeculativeGenerator(smollm2, draft, tree, adaptive=False).generate(prompt, settings)
            assert out.token_ids == expected, (name, label)
            passes[label] += out.stats.target_passes
    # the same tokens in (at most a few) more target passes: τ drops by a few percent at most
    assert passes["subset"] <= passes["full"] * 1.1, passes


def test_vocab_sweep_script_runs_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "sweep.json"
    command = [sys.executable, str(ROOT / "bench" / "cpu" / "vocab_sweep.py"), "--questions", "1",
               "--max-new-tokens", "8", "--vocab-limit", "50", "--sizes", "full,2048", "--trees", "2/2/4",
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [row["method"] for row in report["rows"]] == ["beagle-full", "beagle-2048"]
    assert all(row["exact_match"] == 1.0 for row in report["rows"])
    assert report["rows"][1]["size"] == 2048 and 0 < report["rows"][1]["coverage_vocab_data"] < 1
    assert "| 2/2/4 | beagle-2048 | 2048 |" in out.with_suffix(".md").read_text()
