"""The flags of `driver.py`: every knob of every GPU recipe, with the default its results were made with."""

from __future__ import annotations

import argparse
import os
import shlex

from bench_suites import SUITES
from variants import DEFAULT_VARIANTS, VARIANTS

STAGED_SHAREGPT = "/tmp/beagle-stage/sharegpt.jsonl.gz"  # where bench/gpu/staging/stage_a.sh puts the data


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--dry-run", action="store_true", help="print the commands and steps; run nothing")
    common.add_argument("--cache", default=os.environ.get("BEAGLE_CACHE", "/tmp/beagle-cache"),
                        help="BEAGLE_CACHE of the commands (default: $BEAGLE_CACHE, else /tmp/beagle-cache, where "
                             "staging/stage_c.sh puts SmolLM2)")
    return common


def _target() -> argparse.ArgumentParser:
    target = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    target.add_argument("--target", default="smollm2", help="target model (default smollm2)")
    target.add_argument("--device", default=None, help="--device of every beagle command (default: theirs)")
    return target


def _regeneration() -> argparse.ArgumentParser:
    regen = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    regen.add_argument("--work", default="/tmp/beagle-ablations",
                       help="working folder, kept between calls while the machine stays warm")
    regen.add_argument("--source", default=STAGED_SHAREGPT,
                       help="conversations: the training ones, then the held-out ones (staging/prepare_stage.sh)")
    regen.add_argument("--train", type=int, default=6000, help="training conversations to regenerate")
    regen.add_argument("--heldout", type=int, default=256, help="held-out conversations (regenerated first)")
    regen.add_argument("--max-length", type=int, default=1024, help="conversation and training length in tokens")
    regen.add_argument("--regen-batch", type=int, default=512, help="`beagle regenerate --batch-size`")
    regen.add_argument("--regen-tokens", type=int, default=256, help="tokens per regenerated answer at most")
    regen.add_argument("--regen-turns", type=int, default=2, help="the first N assistant turns are regenerated")
    regen.add_argument("--regen-budget", type=int, default=150, help="no new conversation after this many seconds")
    regen.add_argument("--regenerated", default=None,
                       help="a regenerated.jsonl.gz an earlier call returned: seeds WORK on a fresh machine")
    return regen


def _training(steps_flag: str, steps: int, epochs2: int, limit: int, threads: int) -> argparse.ArgumentParser:
    train = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    train.add_argument(steps_flag, type=int, default=steps, help=f"optimizer steps per run (default {steps})")
    train.add_argument("--epochs1", type=int, default=1, help="stage-1 epochs (default 1)")
    train.add_argument("--epochs2", type=int, default=epochs2, help=f"stage-2 epochs (default {epochs2})")
    train.add_argument("--train-batch", type=int, default=16, help="global batch in sequences")
    train.add_argument("--lr", type=float, default=5e-4)
    train.add_argument("--warmup", type=int, default=100)
    train.add_argument("--limit", type=int, default=limit, help=f"seconds per training process (default {limit})")
    train.add_argument("--threads", type=int, default=threads, help="OMP_NUM_THREADS of each training process")
    train.add_argument("--kv-all", type=int, default=9, help="--draft-kv-heads of beagle-kv (SmolLM2: 9 heads)")
    train.add_argument("--init-beagle", default="smollm2-beagle", help="the draft beagle-ft starts from")
    train.add_argument("--init-eagle2", default="smollm2-eagle2", help="the draft eagle2-ft starts from")
    train.add_argument("--lr-ft", type=float, default=1e-4, help="lr of the fine-tune variants")
    return train


def _out(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--out", required=required, help="the folder that comes back ($OUT on the lent GPU)")


def build_parser(commands: dict, scripts: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driver.py", description="The GPU recipes of bench/gpu.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    common, target, regen = _common(), _target(), _regeneration()

    def add(name: str, help_text: str, *parents) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text, parents=[common, *parents],
                                 allow_abbrev=False)
        command.set_defaults(func=commands[name])
        return command

    command = add("regenerate", "the target's own answers to the staged conversations -> OUT/regenerated.jsonl.gz",
                  target, regen)
    _out(command)
    command = add("features", "regenerate if needed, then the features retrain needs (held-out, every training "
                  "conversation)", target, regen)
    _out(command, required=False)
    command = add("ablations", "regenerate, features, the variants side by side, the table, the best drafts (bf16)",
                  target, regen, _training("--max-steps", 600, 9, 240, 2))
    _out(command)
    command.add_argument("--ablation-train", type=int, default=None,
                         help="train the variants on the first N regenerated conversations (default: all); "
                              "features of all of them are also made, for retrain")
    command.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                         metavar="VARIANT", help=f"default: {' '.join(DEFAULT_VARIANTS)} (variants.py)")
    command = add("retrain", "the best Beagle and EAGLE-2 variants (or --recipes), longer, side by side",
                  target, _training("--steps", 2400, 999, 330, 4))
    _out(command)
    command.add_argument("--work", default="/tmp/beagle-ablations", help="the ablations' working folder")
    command.add_argument("--max-length", type=int, default=1024)
    command.add_argument("--ablation-steps", type=int, default=600, help="--max-steps of the ablation runs")
    command.add_argument("--recipes", nargs="+", default=None, metavar="VARIANT",
                         help="train these variants (one per arch) instead of the best of ablations.json")

    command = add("train", "Beagle and EAGLE-2 drafts from ShareGPT, side by side -> OUT/drafts/ (bf16)", target)
    _out(command)
    command.add_argument("--work", default="/tmp/beagle-train")
    command.add_argument("--data", default="sharegpt", help="`beagle train --data` (default: sharegpt)")
    command.add_argument("--epochs1", type=int, default=3)
    command.add_argument("--epochs2", type=int, default=2)
    command.add_argument("--train-batch", type=int, default=16)
    command.add_argument("--lr", type=float, default=5e-4)
    command.add_argument("--warmup", type=int, default=100)
    command.add_argument("--max-length", type=int, default=1024)
    command.add_argument("--limit", type=int, default=480, help="seconds per training process")
    command.add_argument("--extra", type=shlex.split, default=[], help="more `beagle train` flags, one string")

    command = add("bench", "`beagle bench` runs of one suite -> OUT/bench-SUITE.{tar.gz,log}", target)
    _out(command)
    command.add_argument("--suite", required=True, choices=list(SUITES),
                         help="; ".join(f"{name}: {suite.about}" for name, suite in SUITES.items()))
    command.add_argument("--runs", nargs="+", default=None, metavar="tT-SET",
                         help="runs, each t<temperature>-<mt-bench|humaneval|sharegpt> (default: the suite's)")
    command.add_argument("--drafts", default=None, help="folder of the trained drafts (default: the suite's)")
    command.add_argument("--results", default=None, help="results folder (default /tmp/beagle-bench-SUITE)")
    command.add_argument("--tokens", type=int, default=128, help="--max-new-tokens")
    command.add_argument("--budget", type=int, default=None, help="--time-budget of every run (default: per run)")
    command.add_argument("--limit", type=int, default=None, help="--limit of every run (default: per run)")

    command = add("vocab-bench", "draft vocabularies from the regenerated features on the retrained drafts", target)
    _out(command)
    command.add_argument("--drafts", default="/tmp/beagle-ablations/final-bf16")
    command.add_argument("--features", default="/tmp/beagle-ablations/features/regen-train-all")
    command.add_argument("--results", default="/tmp/beagle-bench-vocab")
    command.add_argument("--sizes", type=int, nargs="+", default=[32768, 16384, 8192, 4096, 2048])
    command.add_argument("--tokens", type=int, default=128)
    command.add_argument("--budget", type=int, default=80)
    command.add_argument("--limit", type=int, default=80)

    command = add("cudnn", "`beagle bench` with cuDNN attention off and on -> OUT/cudnn/{off,on}", target)
    _out(command)
    command.add_argument("--budget", type=int, default=60)
    command.add_argument("--tokens", type=int, default=128)

    for name, script in scripts.items():
        command = sub.add_parser(name, help=f"bench/gpu/{script} (its flags follow)", parents=[common],
                                 allow_abbrev=False, add_help=False)
        command.set_defaults(func=commands[name], script_args=[])
    return parser


def parse(parser: argparse.ArgumentParser, scripts: dict, argv: list[str] | None):
    """Parse; a script subcommand hands every flag it does not know to its script."""
    args, rest = parser.parse_known_args(argv)
    if args.command in scripts:
        args.script_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args
