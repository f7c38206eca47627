"""The GPU recipes, one command each: `python3 bench/gpu/driver.py SUBCOMMAND [flags]` from the repository root.

Every knob is a flag (`driver.py SUBCOMMAND --help`); `--dry-run` prints the commands instead of running them.
Recipes on SmolLM2 need the staged assets first (bench/gpu/staging/README.md); those on random weights do not.

    regenerate   the target's own answers to the staged conversations (step 1 of ablations)
    features     regenerate if needed, then the target features `retrain` needs
    ablations    regenerate, features, the variants side by side (variants.py), the table, the best drafts in bf16
    retrain      the best (or --recipes) Beagle and EAGLE-2 variants, longer, side by side; bf16 drafts
    train        Beagle and EAGLE-2 from ShareGPT, side by side (the first leg of the shipped drafts)
    bench        `beagle bench` runs of one suite (trained / retrained / shipped drafts), one tarball
    vocab-bench  draft vocabularies from the regenerated features, applied to the retrained drafts, benchmarked
    cudnn        `beagle bench` with PyTorch's cuDNN attention off and on
    fast-path, round-cost, train-memory, multi-gpu-train, tree-sweep, vocab-sweep, summarize, plot-memory
                 the measurement scripts of this folder (their own flags follow the subcommand)
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1] / "src"))

import ablations  # noqa: E402  (bench/gpu is not a package: the path above makes its modules importable)
from bench_suites import SUITES, bench_run_args, parse_run  # noqa: E402
from driver_args import build_parser, parse  # noqa: E402
from runner import BEAGLE, Runner, export_draft  # noqa: E402
from variants import TrainKnobs, run_of_arch, train_args  # noqa: E402

# Subcommand -> script of this folder that takes the rest of the command line (its own argparse flags).
SCRIPTS = {"fast-path": "fast_path.py", "round-cost": "round_cost.py", "train-memory": "train_memory.py",
           "multi-gpu-train": "multi_gpu_train.py", "tree-sweep": "tree_sweep.py", "vocab-sweep": "vocab_sweep.py",
           "summarize": "summarize.py", "plot-memory": "plot_memory.py"}
RETURN_LIMIT = 16 * 1024 * 1024  # a returned file larger than this would crowd out the others (64 MiB per call)


def fail(message: str, status: int) -> int:
    print(message, file=sys.stderr)
    return status


def device_args(args) -> list[str]:
    return ["--device", args.device] if args.device else []


# ----------------------------------------------------------------------------------------------- regenerate/features
def regenerate(args, runner: Runner) -> int:
    """Step 1: WORK/conversations.jsonl (held-out first), then WORK/regenerated.jsonl unless an earlier call made it
    (or --regenerated seeds it)."""
    work = Path(args.work)
    runner.stamp("1. regenerate")
    if not (work / "conversations.jsonl").is_file():
        runner.step(f"prepare {args.heldout} held-out + {args.train} training conversations of {args.source}",
                    ablations.prepare, Path(args.source), args.train, args.heldout, work)
    if args.regenerated and not (work / "regenerated.jsonl").is_file():
        runner.step(f"seed {work}/regenerated.jsonl from {args.regenerated}", seed_regenerated,
                    Path(args.regenerated), work)
    if (work / "regenerated.jsonl").is_file():
        print(f"{work}/regenerated.jsonl exists (an earlier call): kept")
        return 0
    result = runner.run([*BEAGLE, "regenerate", "--target", args.target, "--data", str(work / "conversations.jsonl"),
                         "--out", str(work / "regenerated.jsonl"), "--batch-size", str(args.regen_batch),
                         "--max-new-tokens", str(args.regen_tokens), "--max-turns", str(args.regen_turns),
                         "--max-length", str(args.max_length), "--time-budget", str(args.regen_budget),
                         "--report", str(work / "regenerate-report.json"), "--no-progress", *device_args(args)],
                        log=work / "logs" / "regenerate.log")
    return 0 if result is None or result.returncode == 0 else 4


def seed_regenerated(source: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    with gzip.open(source, "rb") as packed, open(work / "regenerated.jsonl.tmp", "wb") as plain:
        shutil.copyfileobj(packed, plain)
    (work / "regenerated.jsonl.tmp").rename(work / "regenerated.jsonl")
    if (source.parent / "regenerate-report.json").is_file():
        shutil.copy(source.parent / "regenerate-report.json", work)


def return_regenerated(work: Path, out: Path) -> None:
    """OUT/regenerated.jsonl.gz, unless it is over RETURN_LIMIT (then it stays in WORK)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(work / "regenerated.jsonl", "rb") as plain, gzip.open(out / "regenerated.jsonl.gz", "wb") as packed:
        shutil.copyfileobj(plain, packed)
    if (out / "regenerated.jsonl.gz").stat().st_size > RETURN_LIMIT:
        print(f"regenerated.jsonl.gz is over {RETURN_LIMIT >> 20} MiB: not returned (kept in {work})")
        (out / "regenerated.jsonl.gz").unlink()


def command_regenerate(args, runner: Runner) -> int:
    status = regenerate(args, runner)
    if status:
        return status
    work, out = Path(args.work), Path(args.out)
    runner.step(f"return {out}/regenerated.jsonl.gz", return_regenerated, work, out)
    for name in ("regenerate-report.json", "sources.json"):
        runner.step(f"return {out}/{name}", shutil.copy, work / name, out)
    return 0


def features(args, runner: Runner, sets: list[str], fixed: bool) -> int:
    """Step 2: split the regenerated file, then `beagle datagen` of every set at once."""
    work = Path(args.work)
    runner.stamp("2. features")
    runner.step("split the regenerated conversations", ablations.split, work, getattr(args, "ablation_train", None),
                fixed)
    jobs = {name: [*BEAGLE, "datagen", "--target", args.target, "--data", str(work / f"{name}.jsonl"), "--out",
                   str(work / "features" / name), "--max-length", str(args.max_length), "--batch-tokens", "65536",
                   "--no-progress", *device_args(args)] for name in sets}
    logs = {name: work / "logs" / f"datagen-{name}.log" for name in sets}
    statuses = runner.side_by_side(jobs, logs)
    for name, (status, _) in statuses.items():
        tail = "".join(Path(logs[name]).read_text().splitlines(keepends=True)[-3:])
        print(f"datagen {name}: exit {status}\n{tail}", end="")
    return 6 if any(status for status, _ in statuses.values()) else 0


def command_features(args, runner: Runner) -> int:
    return regenerate(args, runner) or features(args, runner, ["regen-heldout", "regen-train-all"], fixed=False)


# ----------------------------------------------------------------------------------------------- ablations / retrain
def knobs(args, work: Path, regenerated: Path) -> TrainKnobs:
    return TrainKnobs(regenerated=regenerated, fixed=work / "features" / "fixed-train", epochs1=args.epochs1,
                      epochs2=args.epochs2, kv_all=args.kv_all,
                      init_drafts={"beagle": args.init_beagle, "eagle2": args.init_eagle2}, lr_ft=args.lr_ft)


def common_train_args(args, work: Path, steps: int) -> list[str]:
    return ["--target", args.target, "--max-length", str(args.max_length), "--batch-size", str(args.train_batch),
            "--lr", str(args.lr), "--warmup", str(args.warmup), "--seed", "0", "--max-steps", str(steps),
            "--eval-data", str(work / "features" / "regen-heldout"), "--no-progress", "--no-tensorboard",
            *device_args(args)]


def train_side_by_side(args, runner: Runner, runs: dict[str, list[str]], folder: Path, logs: Path, status: Path,
                       steps: int) -> dict:
    """One `beagle train` process per run (into folder/<name>), at once, each cut after --limit s; ``status`` gets
    "name exit seconds" per run (what ablations.load_runs reads)."""
    work = Path(args.work)
    jobs = {name: [*BEAGLE, "train", *common_train_args(args, work, steps), *extra, "--out", str(folder / name)]
            for name, extra in runs.items()}
    sampler = None
    if not runner.dry_run and shutil.which("nvidia-smi"):
        logs.mkdir(parents=True, exist_ok=True)
        sampler = subprocess.Popen(["bash", "-c", "while sleep 20; do nvidia-smi --query-gpu=utilization.gpu,"
                                    "memory.used --format=csv,noheader; done"],
                                   stdout=open(logs / "gpu.log", "w"), stderr=subprocess.STDOUT)
    statuses = runner.side_by_side(jobs, {name: logs / f"train-{name}.log" for name in runs}, timeout=args.limit,
                                   env={"OMP_NUM_THREADS": str(args.threads)})
    if sampler is not None:
        sampler.kill()
    if statuses:
        lines = [f"{name} {code} {seconds}" for name, (code, seconds) in statuses.items()]
        status.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return statuses


def command_ablations(args, runner: Runner) -> int:
    work, out = Path(args.work), Path(args.out)
    status = regenerate(args, runner)
    sets = ["regen-train", "fixed-train", "regen-heldout"] + (["regen-train-all"] if args.ablation_train else [])
    status = status or features(args, runner, sets, fixed=True)
    if status:
        return status
    runner.stamp(f"3. train: {' '.join(args.variants)}")
    if not runner.dry_run:
        shutil.rmtree(work / "runs", ignore_errors=True)
        (work / "status.txt").unlink(missing_ok=True)
    table = knobs(args, work, work / "features" / "regen-train")
    train_side_by_side(args, runner, {name: train_args(name, table) for name in args.variants}, work / "runs",
                       work / "logs", work / "status.txt", args.max_steps)

    runner.stamp("4. summary")
    runner.step(f"table -> {out}/ablations.{{json,md}}", ablations.summarize, work, args.max_steps, out)
    runner.step(f"keep ablations.json in {work} for retrain", shutil.copy, out / "ablations.json", work)
    best = runner.step("pick the best run of each arch", ablations.best_runs, work, args.max_steps)
    if runner.dry_run:
        best = {arch: f"<best {arch} run>" for arch in ("beagle", "eagle2")}
    for arch, run in best.items():
        export_draft(runner, work / "runs" / run, out / arch, {"ablation_run": run})
    runner.step(f"return {out}/regenerated.jsonl.gz", return_regenerated, work, out)
    runner.step(f"return {out}/logs.tar.gz", pack, out / "logs.tar.gz", work,
                ["logs", "status.txt", "sources.json", "regenerate-report.json", "runs/*/config.json",
                 "features/*/manifest.json"])
    runner.stamp("done")
    return 0


def pack(archive: Path, folder: Path, patterns: list[str], exclude: str | None = None) -> None:
    """archive (tar.gz) of what ``patterns`` match under ``folder`` (named relative to it), less ``exclude``."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for pattern in patterns:
            for path in sorted(folder.glob(pattern)):
                tar.add(path, arcname=str(path.relative_to(folder)),
                        filter=lambda info: None if exclude and fnmatch.fnmatch(info.name, exclude) else info)


def recipe_of(args, arch: str, runner: Runner) -> str:
    if args.recipes:
        return run_of_arch(arch, args.recipes)
    work = Path(args.work)
    if runner.dry_run and not (work / "ablations.json").is_file():
        print(f"# (dry run: no {work}/ablations.json; showing the base variant {arch})")
        return arch
    chosen = ablations.best_runs(work, args.ablation_steps)
    if arch not in chosen:
        raise SystemExit(f"no finished {arch} run in {work}/runs")
    return chosen[arch]


def command_retrain(args, runner: Runner) -> int:
    work, out = Path(args.work), Path(args.out)
    features_dir = work / "features"
    has_features = any((features_dir / name).is_dir() for name in ("regen-train", "regen-train-all"))
    if not runner.dry_run and ((not args.recipes and not (work / "ablations.json").is_file()) or not has_features):
        return fail(f"no ablation results or features in {work} (run `driver.py ablations` or `features` first, in a "
                    "call right before this one)", 3)
    regenerated = features_dir / ("regen-train-all" if (features_dir / "regen-train-all").is_dir() or runner.dry_run
                                  else "regen-train")
    print(f"training features: {regenerated}")
    final = work / "final"
    if not runner.dry_run:
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(work / "final-bf16", ignore_errors=True)
        final.mkdir(parents=True)
    recipes = {arch: recipe_of(args, arch, runner) for arch in ("beagle", "eagle2")}
    table = knobs(args, work, regenerated)
    statuses = train_side_by_side(args, runner, {arch: train_args(run, table) for arch, run in recipes.items()},
                                  final, final / "logs", final / "status.txt", args.steps)
    rows = []
    for arch, run in recipes.items():
        if not runner.dry_run and not (final / arch / "config.json").is_file():
            rows.append((arch, run, None, statuses.get(arch)))
            continue
        for folder in (out / f"smollm2-{arch}", work / "final-bf16" / f"smollm2-{arch}"):
            export_draft(runner, final / arch, folder, {"recipe": run})
        rows.append((arch, run, final / arch, statuses.get(arch)))
    runner.step(f"table -> {out}/retrain.md", write_retrain_table, rows, out)
    runner.step(f"return {out}/retrain-logs.tar.gz", pack, out / "retrain-logs.tar.gz", final,
                ["logs", "status.txt", "*/config.json"])
    return 0


def write_retrain_table(rows: list, out: Path) -> None:
    lines = ["| draft | recipe (ablation run) | steps | epochs | τ_sim | acc@1..5 | exit | wall s |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for arch, run, folder, status in rows:
        exit_status, seconds = status or ("—", "—")
        if folder is None:
            lines.append(f"| {arch} | {run} | — | — | — | no checkpoint | {exit_status} | {seconds} |")
            continue
        training = json.loads((folder / "config.json").read_text()).get("training", {})
        last = (training.get("history") or [{}])[-1]
        acceptance = " ".join(f"{a:.2f}" for a in last.get("acceptance") or [])
        lines.append(f"| {arch} | {run} | {training.get('step')} | {last.get('epoch')} | {last.get('tau', 0):.3f} "
                     f"| {acceptance} | {exit_status} | {seconds} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------------- train
def command_train(args, runner: Runner) -> int:
    """Both drafts on the same ShareGPT conversations, side by side on one GPU; bf16 copies in OUT/drafts/."""
    work, out = Path(args.work), Path(args.out)
    common = ["--target", args.target, "--data", args.data, "--max-length", str(args.max_length), "--batch-size",
              str(args.train_batch), "--lr", str(args.lr), "--warmup", str(args.warmup), "--epochs-stage1",
              str(args.epochs1), "--epochs-stage2", str(args.epochs2), "--seed", "0", *device_args(args), *args.extra]
    jobs = {arch: [*BEAGLE, "train", *common, "--arch", arch, "--out", str(work / arch)]
            for arch in ("beagle", "eagle2")}
    statuses = runner.side_by_side(jobs, {arch: out / f"train_{arch}.log" for arch in jobs}, timeout=args.limit)
    for arch, (status, seconds) in statuses.items():
        print(f"{arch} training exit {status} after {seconds} s")
    for arch in jobs:
        if not runner.dry_run and not (work / arch / "config.json").is_file():
            print(f"{arch}: no checkpoint")
            continue
        export_draft(runner, work / arch, work / "bf16" / f"smollm2-{arch}")
        runner.step(f"return {out}/drafts/smollm2-{arch}", shutil.copytree, work / "bf16" / f"smollm2-{arch}",
                    out / "drafts" / f"smollm2-{arch}", dirs_exist_ok=True)
    return 0


# ----------------------------------------------------------------------------------------------- bench
def command_bench(args, runner: Runner) -> int:
    suite = SUITES[args.suite]
    drafts = suite.drafts(Path(args.drafts) if args.drafts else None)
    missing = [drafts[name] for name in suite.trained if not (Path(drafts[name]) / "model.safetensors").is_file()]
    if missing and not runner.dry_run:
        return fail(f"no drafts at {', '.join(missing)} (the recipe that writes them runs in the call before)", 3)
    results, out = Path(args.results or f"/tmp/beagle-bench-{args.suite}"), Path(args.out)
    runs = [parse_run(name, suite) for name in (args.runs or suite.default_runs)]
    status = 0
    log = out / f"bench-{args.suite}.log"
    if not runner.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
    for run in runs:
        runner.stamp(f"{run.name} (T={run.temperature:g}, {run.prompts})")
        argv = [*BEAGLE, "bench", *bench_run_args(run, suite, drafts, args), *device_args(args), "--out",
                str(results / run.name)]
        result = runner.run(argv, log=results / f"{run.name}.log")
        if result is not None:
            with open(log, "a") as handle:
                handle.write(f"== {run.name} (T={run.temperature:g}, {run.prompts})\n"
                             + (results / f"{run.name}.log").read_text())
            status = status or result.returncode
    runner.step(f"return {out}/bench-{args.suite}.tar.gz", pack, out / f"bench-{args.suite}.tar.gz", results,
                [run.name for run in runs])
    return status


def command_vocab_bench(args, runner: Runner) -> int:
    """Vocabularies of --sizes tokens counted over the target's regenerated training answers, plus the shipped one,
    applied training-free to both retrained drafts, against their full heads on MT-Bench T=0."""
    drafts, results, out = Path(args.drafts), Path(args.results), Path(args.out)
    pair = [str(drafts / "smollm2-beagle"), str(drafts / "smollm2-eagle2")]
    made = runner.run([sys.executable, str(HERE / "vocab_drafts.py"), args.features, str(results / "vocab"), *pair,
                       "--sizes", *map(str, args.sizes), "--target", args.target], capture=True)
    if made is not None and (made.returncode or not made.stdout.split()):
        return fail("no vocabulary drafts (bench/gpu/vocab_drafts.py failed)", 4)
    # A dry run shows the folders vocab_drafts.py would name: <draft>-v<N> per size, and the shipped vocabulary.
    names = made.stdout.split() if made else [f"{stem}-v{size}" for stem in ("beagle", "eagle2")
                                              for size in [*args.sizes, "8192-shipped"]]
    flags = ["--draft", pair[0], "--draft-name", "beagle", "--draft", pair[1], "--draft-name", "eagle2"]
    for name in names:
        flags += ["--draft", str(results / "vocab" / name), "--draft-name", name]
    argv = [*BEAGLE, "bench", "--target", args.target, "--no-noconcat", "--no-progress", "--no-compile",
            "--max-new-tokens", str(args.tokens), "--time-budget", str(args.budget), "--prompts", "mt-bench",
            "--limit", str(args.limit), "--temperature", "0", *flags, "--methods", ",".join(["ar", "beagle", "eagle2",
            *names]), *device_args(args), "--out", str(results / "t0-mt-bench-vocab")]
    result = runner.run(argv, log=out / "vocab-bench.log")
    runner.step(f"return {out}/vocab-bench.tar.gz", pack, out / "vocab-bench.tar.gz", results,
                ["t0-mt-bench-vocab", "vocab"], exclude="vocab/*-v*")
    return 0 if result is None else result.returncode


def command_cudnn(args, runner: Runner) -> int:
    """The same `beagle bench` with Beagle's default (cuDNN attention off) and with --cudnn-sdp (on)."""
    out = Path(args.out)
    status = 0
    for setting in ("off", "on"):
        runner.stamp(f"cuDNN attention {setting}")
        result = runner.run([*BEAGLE, "bench", "--target", args.target, "--draft", "smollm2-beagle", "--draft-name",
                             "beagle", "--draft", "smollm2-eagle2", "--draft-name", "eagle2", "--methods",
                             "ar,beagle,eagle2", "--prompts", "mt-bench", "--limit", "80", "--max-new-tokens",
                             str(args.tokens), "--time-budget", str(args.budget), "--no-progress", "--no-plots",
                             *(["--cudnn-sdp"] if setting == "on" else []), *device_args(args),
                             "--out", str(out / "cudnn" / setting)], log=out / "cudnn" / f"{setting}.log")
        status = status or (result.returncode if result else 0)
    return status


def command_script(args, runner: Runner) -> int:
    result = runner.run([sys.executable, str(HERE / SCRIPTS[args.command]), *args.script_args])
    return 0 if result is None else result.returncode


COMMANDS = {"regenerate": command_regenerate, "features": command_features, "ablations": command_ablations,
            "retrain": command_retrain, "train": command_train, "bench": command_bench,
            "vocab-bench": command_vocab_bench, "cudnn": command_cudnn,
            **{name: command_script for name in SCRIPTS}}


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(COMMANDS, SCRIPTS), SCRIPTS, argv)
    runner = Runner(dry_run=args.dry_run, cache=args.cache)
    return int(args.func(args, runner) or 0)


if __name__ == "__main__":
    sys.exit(main())
