"""The GPU recipes under bench/gpu run end to end at tiny scale on CPU (so they do not rot between GPU runs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / script), *args], capture_output=True,
                            text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_train_memory_tiny(tmp_path):
    out = tmp_path / "memory.json"
    _run("train_memory.py", "--tiny", "--max-steps", "2", "--repeats", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["steps"]) for r in rows] == [
        ("beagle-stage2", 1), ("eagle3-ttt", 1), ("beagle-stage2", 2), ("eagle3-ttt", 2)]
    ttt = [r["saved_tensors_peak_gib"] for r in rows if r["method"] == "eagle3-ttt"]
    assert ttt[1] > ttt[0]  # the unrolled test keeps every step's graph


def test_round_cost_tiny(tmp_path):
    out = tmp_path / "round.json"
    _run("round_cost.py", "--tiny", "--rounds", "2", "--out", str(out))
    report = json.loads(out.read_text())
    assert abs(sum(report["fraction_of_round"].values()) - 1.0) < 0.02


def test_multi_gpu_train_tiny(tmp_path):
    # The CLI under torchrun (2 gloo ranks): data parallel and fully sharded runs equal one process.
    out = tmp_path / "multi"
    _run("multi_gpu_train.py", "--tiny", "--nproc", "2", "--modes", "none,both", "--out", str(out))
    rows = json.loads((out / "multi_gpu_train.json").read_text())["rows"]
    assert [row["run"] for row in rows] == ["single", "fsdp-none", "fsdp-both"]
    assert all(row["ok"] and row["steps"] == 4 for row in rows)
    assert max(row["max_weight_diff_vs_single"] for row in rows) < 1e-5
