"""The `beagle bench` suites of `driver.py bench`, each defined once: which drafts, which runs, on which path.

A run is named ``t<temperature>-<prompt set>`` (``t0-mt-bench``, ``t1-humaneval``, ``t0-sharegpt`` = the held-out
ShareGPT split); a suite may give a run its own time budget, prompt limit, methods or the compiled fast path.
Every run interleaves all methods per prompt, 128 new tokens by default, the default GPU tree (5/10/60).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROMPT_SETS = {"mt-bench": "mt-bench", "humaneval": "humaneval", "sharegpt": "sharegpt-heldout"}


@dataclass(frozen=True)
class RunSettings:
    budget: int  # --time-budget: no new prompt after this many seconds
    limit: int = 80  # --limit: prompts, round-robin over categories
    compile: bool = False  # the compiled fast path (else CUDA graphs only: --no-compile, no compilation per process)
    methods: str | None = None  # --methods (None: the suite's)


@dataclass(frozen=True)
class Suite:
    about: str
    trained: dict  # --draft-name -> sub-folder of --drafts (drafts a recipe wrote)
    shipped: dict  # --draft-name -> shipped draft name (drafts/)
    default_drafts: str | None  # --drafts default (None: the suite has no trained drafts)
    default_runs: list
    runs: dict  # run name -> RunSettings; runs not listed get `other`
    other: RunSettings
    methods: str | None  # None: `beagle bench`'s default (ar,hf,hf-static,hf-pld,drafts)
    noconcat: bool = False  # also the -noconcat variant of each Beagle draft

    def drafts(self, folder: Path | None) -> dict[str, str]:
        """--draft-name -> what `beagle bench --draft` takes."""
        folder = folder or Path(self.default_drafts or ".")
        return {**{name: str(folder / sub) for name, sub in self.trained.items()}, **self.shipped}


SUITES = {
    "trained": Suite(
        about="the drafts `driver.py train` wrote, against AR, HF generate and HF prompt lookup (compiled)",
        trained={"beagle": "smollm2-beagle", "eagle2": "smollm2-eagle2"}, shipped={},
        default_drafts="/tmp/beagle-train/bf16",
        default_runs=["t0-mt-bench", "t0-humaneval", "t0-sharegpt", "t1-mt-bench"],
        runs={"t0-mt-bench": RunSettings(150, compile=True), "t0-humaneval": RunSettings(100, 164, compile=True),
              "t0-sharegpt": RunSettings(80, 100, compile=True),
              "t1-mt-bench": RunSettings(80, compile=True, methods="ar,hf,beagle,eagle2")},
        other=RunSettings(80, compile=True), methods=None, noconcat=True),
    "retrained": Suite(
        about="the drafts `driver.py retrain` wrote against the shipped ones (MT-Bench T=0 compiled, the rest "
              "graphs only)",
        trained={"beagle": "smollm2-beagle", "eagle2": "smollm2-eagle2"},
        shipped={"beagle-shipped": "smollm2-beagle", "eagle2-shipped": "smollm2-eagle2"},
        default_drafts="/tmp/beagle-ablations/final-bf16",
        default_runs=["t0-mt-bench", "t0-humaneval", "t0-sharegpt", "t1-mt-bench"],
        runs={"t0-mt-bench": RunSettings(70, compile=True)}, other=RunSettings(35),
        methods="ar,beagle,eagle2,beagle-shipped,eagle2-shipped"),
    "shipped": Suite(
        about="the shipped drafts (drafts/) against AR, graphs only",
        trained={}, shipped={"beagle": "smollm2-beagle", "eagle2": "smollm2-eagle2"}, default_drafts=None,
        default_runs=["t1-humaneval", "t1-sharegpt"], runs={}, other=RunSettings(35), methods="ar,beagle,eagle2"),
}


@dataclass(frozen=True)
class BenchRun:
    name: str
    temperature: float
    prompts: str
    settings: RunSettings


def parse_run(name: str, suite: Suite) -> BenchRun:
    """``t1-humaneval`` -> T=1 on HumanEval, with the suite's settings for that run."""
    head, _, prompt_set = name.partition("-")
    try:
        temperature = float(head.removeprefix("t"))
    except ValueError:
        temperature = None
    if not head.startswith("t") or temperature is None or prompt_set not in PROMPT_SETS:
        raise SystemExit(f"run {name!r}: expected t<temperature>-<{'|'.join(PROMPT_SETS)}>")
    return BenchRun(name, temperature, PROMPT_SETS[prompt_set], suite.runs.get(name, suite.other))


def bench_run_args(run: BenchRun, suite: Suite, drafts: dict[str, str], args) -> list[str]:
    """`beagle bench` flags of one run (--budget / --limit / --tokens override the suite's when given)."""
    settings = run.settings
    flags = ["--target", args.target, "--no-progress", "--max-new-tokens", str(args.tokens), "--time-budget",
             str(args.budget if args.budget is not None else settings.budget), "--prompts", run.prompts, "--limit",
             str(args.limit if args.limit is not None else settings.limit), "--temperature", f"{run.temperature:g}"]
    if run.temperature:
        flags += ["--seed", "0"]
    if not settings.compile:
        flags.append("--no-compile")
    if not suite.noconcat:
        flags.append("--no-noconcat")
    for name, path in drafts.items():
        flags += ["--draft", path, "--draft-name", name]
    methods = settings.methods or suite.methods
    return flags + (["--methods", methods] if methods else [])
