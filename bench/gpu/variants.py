"""The training variants of the ablation table, each defined once: what it changes and its `beagle train` flags.

`driver.py ablations` trains the variants side by side; `driver.py retrain` trains the best one of each
architecture (or the named ones) longer with the same flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    arch: str  # beagle | eagle2
    data: str  # regenerated (the target's own answers) | fixed (ShareGPT's answers)
    change: str  # what differs from the base run "beagle", for the table
    stage1_only: bool = False  # all epochs in stage 1 (--epochs-stage2 0)
    window: int | None = None  # --window
    sim_steps: int | None = None  # --sim-steps
    all_kv_heads: bool = False  # --draft-kv-heads = every attention head (the knob --kv-all)
    last_state_skip: bool = False  # --last-state-skip (Beagle beyond the paper)
    first_position_weight: float | None = None  # --first-position-weight (Beagle)
    noise_std: float | None = None  # --noise-std (with the architecture's own kind of noise)
    lr_schedule: str | None = None  # --lr-schedule (decay to 0 at the last planned step)
    fine_tune: bool = False  # start from the shipped draft of its arch (--init-draft, lr --lr-ft)


VARIANTS = {
    "beagle": Variant("beagle", "regenerated",
                      "base: regenerated data, stage 1 + 2, window 5, sim-steps 4, target's KV heads"),
    "beagle-fixed": Variant("beagle", "fixed", "ShareGPT's answers instead of the target's"),
    "beagle-stage1": Variant("beagle", "regenerated", "stage 1 only (--epochs-stage2 0)", stage1_only=True),
    "beagle-window3": Variant("beagle", "regenerated", "--window 3", window=3),
    "beagle-sim5": Variant("beagle", "regenerated", "--sim-steps 5 (stage 2 covers the tree depth)", sim_steps=5),
    "beagle-kv": Variant("beagle", "regenerated", "--draft-kv-heads = all heads (values keep every state dim)",
                         all_kv_heads=True),
    "beagle-skip": Variant("beagle", "regenerated", "--last-state-skip (W·norm(newest visible state) on the residual)",
                           last_state_skip=True),
    "eagle2": Variant("eagle2", "regenerated", "EAGLE-2 on the regenerated data"),
    "eagle2-fixed": Variant("eagle2", "fixed", "EAGLE-2 on ShareGPT's answers"),
    "beagle-ft": Variant("beagle", "regenerated", "the shipped Beagle draft fine-tuned (--init-draft, lr --lr-ft)",
                         fine_tune=True),
    "eagle2-ft": Variant("eagle2", "regenerated", "the shipped EAGLE-2 draft fine-tuned (--init-draft, lr --lr-ft)",
                         fine_tune=True),
    "beagle-ft-first2": Variant("beagle", "regenerated", "beagle-ft with --first-position-weight 2", fine_tune=True,
                                first_position_weight=2.0),
    "beagle-ft-cosine": Variant("beagle", "regenerated", "beagle-ft with --lr-schedule cosine", fine_tune=True,
                                lr_schedule="cosine"),
    "eagle2-ft-noise": Variant("eagle2", "regenerated", "eagle2-ft with EAGLE's own noise scale, U(±0.1) "
                               "(--noise-std 0.0577)", fine_tune=True, noise_std=0.0577),
    "beagle-skip-ft": Variant("beagle", "regenerated", "the shipped Beagle draft fine-tuned with --last-state-skip "
                              "(zero-initialised)", fine_tune=True, last_state_skip=True),
}
# The variants `driver.py ablations` trains unless --variants names others.
DEFAULT_VARIANTS = ["beagle", "beagle-fixed", "beagle-stage1", "beagle-window3", "beagle-sim5", "beagle-kv", "eagle2",
                    "beagle-ft", "eagle2-ft", "beagle-skip", "beagle-skip-ft", "beagle-ft-first2", "beagle-ft-cosine",
                    "eagle2-ft-noise"]
PAIRS = [  # (question, run, reference) of the table's Δτ_sim column
    ("regenerated vs fixed data (Beagle)", "beagle", "beagle-fixed"),
    ("stage 1 + 2 vs stage 1 only", "beagle", "beagle-stage1"),
    ("window 5 vs 3", "beagle", "beagle-window3"),
    ("sim-steps 5 vs 4", "beagle-sim5", "beagle"),
    ("all KV heads vs the target's", "beagle-kv", "beagle"),
    ("EAGLE-2 vs Beagle (regenerated)", "eagle2", "beagle"),
    ("regenerated vs fixed data (EAGLE-2)", "eagle2", "eagle2-fixed"),
    ("fine-tuned shipped vs from scratch (Beagle)", "beagle-ft", "beagle"),
    ("fine-tuned shipped vs from scratch (EAGLE-2)", "eagle2-ft", "eagle2"),
    ("EAGLE-2 vs Beagle (fine-tuned)", "eagle2-ft", "beagle-ft"),
    ("last-state skip vs none (from scratch)", "beagle-skip", "beagle"),
    ("last-state skip vs none (fine-tuned)", "beagle-skip-ft", "beagle-ft"),
    ("first position weight 2 vs 1 (fine-tuned)", "beagle-ft-first2", "beagle-ft"),
    ("cosine decay vs constant LR (fine-tuned)", "beagle-ft-cosine", "beagle-ft"),
    ("EAGLE's noise scale vs 0.2 (EAGLE-2 fine-tuned)", "eagle2-ft-noise", "eagle2-ft"),
]


@dataclass(frozen=True)
class TrainKnobs:
    """What the variants' flags are made of (the driver's flags of the same names)."""
    regenerated: Path  # feature folder of the regenerated training conversations
    fixed: Path  # feature folder of the same conversations with ShareGPT's answers
    epochs1: int
    epochs2: int
    kv_all: int
    init_drafts: dict  # arch -> the draft a fine-tune variant starts from
    lr_ft: float


def train_args(name: str, knobs: TrainKnobs) -> list[str]:
    """The `beagle train` flags of variant ``name`` (beyond the run's common ones: target, steps, batch, lr, ...)."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    variant = VARIANTS[name]
    features = knobs.regenerated if variant.data == "regenerated" else knobs.fixed
    args = ["--arch", variant.arch, "--features", str(features)]
    if variant.stage1_only:
        args += ["--epochs-stage1", str(knobs.epochs1 + knobs.epochs2), "--epochs-stage2", "0"]
    else:
        args += ["--epochs-stage1", str(knobs.epochs1), "--epochs-stage2", str(knobs.epochs2)]
    if variant.window is not None:
        args += ["--window", str(variant.window)]
    if variant.sim_steps is not None:
        args += ["--sim-steps", str(variant.sim_steps)]
    if variant.all_kv_heads:
        args += ["--draft-kv-heads", str(knobs.kv_all)]
    if variant.fine_tune:
        args += ["--init-draft", str(knobs.init_drafts[variant.arch]), "--lr", str(knobs.lr_ft)]
    if variant.last_state_skip:
        args += ["--last-state-skip"]
    if variant.first_position_weight is not None:
        args += ["--first-position-weight", str(variant.first_position_weight)]
    if variant.noise_std is not None:
        args += ["--noise-std", str(variant.noise_std)]
    if variant.lr_schedule is not None:
        args += ["--lr-schedule", variant.lr_schedule]
    return args


def run_of_arch(arch: str, names: list[str]) -> str:
    """Of the variant ``names`` (retrain --recipes), the one of ``arch``."""
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    mine = [name for name in names if VARIANTS[name].arch == arch]
    if len(mine) != 1:
        raise SystemExit(f"--recipes must name exactly one {arch} variant (got {mine})")
    return mine[0]
