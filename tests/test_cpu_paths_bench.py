"""bench/cpu/cpu_paths.py runs end to end on SmolLM2 at tiny settings (a benchmark, not a timed test: only its
report's shape and the identical-output column are checked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_paths_script_runs_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "paths.json"
    command = [sys.executable, str(ROOT / "bench" / "cpu" / "cpu_paths.py"), "--configs",
               "stock,onednn+gqa+growing+bf16-draft", "--questions", "1", "--max-new-tokens", "6", "--repeats", "1",
               "--pass-repeats", "1", "--trees", "2/2/3", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row["config"], row["method"]) for row in report["rows"]] == [
        ("stock", "ar"), ("stock", "beagle-2/2/3"),
        ("onednn+gqa+growing+bf16-draft", "ar"), ("onednn+gqa+growing+bf16-draft", "beagle-2/2/3")]
    assert all(row["exact_match"] == 1.0 for row in report["rows"])
    assert set(report["pass_ms"]["stock"]) == {"step", "2", "3", "4", "6", "8", "10", "12", "16"}
    assert out.with_suffix(".md").read_text().startswith("# CPU decoding paths")
