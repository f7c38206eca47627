"""``beagle train``: train a draft of any registered architecture for a target.

The options are :class:`~beagle.training.config.TrainConfig`'s fields that carry ``cli`` metadata (help,
choices, metavar, flag), typed from their annotations; ``--target`` / ``--dtype`` / ``--device`` are the
shared target options. Architecture names and notes come from :mod:`beagle.models.registry`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
import typing

from beagle.cli.common import add_target_args
from beagle.models import registry
from beagle.training.config import TrainConfig

MULTI_GPU_NOTE = """\
Multi-GPU: launch with `torchrun --nproc-per-node N -m beagle.cli.main train ...` (data parallel; add
--fsdp target|draft|both when the target or the draft's training state does not fit on one GPU)."""

TYPES = {int: int, float: float, str: str}


def epilog() -> str:
    """Draft sizes and training schedules of the registered architectures, then the multi-GPU note."""
    sizes = "\n".join(textwrap.indent(item.parameter_note, "  ") for item in registry.architectures()
                      if item.parameter_note)
    schedules = "\n".join(item.schedule_note for item in registry.architectures() if item.schedule_note)
    return (f"draft size (shared embedding and LM head excluded; see beagle.models.params.parameter_formula):\n"
            f"{sizes}\n  (d hidden size, H heads, KV key/value heads, hd head dim, I MLP width, all the target's)\n\n"
            f"schedule: {schedules}\n{MULTI_GPU_NOTE}\n")


def cli_fields() -> list[dataclasses.Field]:
    return [item for item in dataclasses.fields(TrainConfig) if "cli" in item.metadata]


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field with ``cli`` metadata (see :func:`beagle.training.config.option`)."""
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for item in cli_fields():
        spec = dict(item.metadata["cli"])
        group = spec.pop("group", None)
        if group is not None and group not in groups:
            groups[group] = parser.add_mutually_exclusive_group(required=True)
        target = groups[group] if group is not None else parser
        flag = spec.pop("flag", None)
        if flag is not None:
            spec.setdefault("metavar", flag.lstrip("-").upper())
        flag = flag or "--" + item.name.replace("_", "-")
        takers = registry.taking_option(item.name)  # an option only some architectures read
        if takers:
            spec["help"] = f"{spec['help']} (--arch {' / '.join(takers)} only)"
        kind = hints[item.name]
        if spec.pop("negate", False):
            target.add_argument("--no-" + item.name.replace("_", "-"), dest=item.name, action="store_false",
                                help=spec["help"])
        elif kind is bool:
            target.add_argument(flag, dest=item.name, action="store_true", help=spec["help"])
        else:
            base = next(arg for arg in typing.get_args(kind) if arg is not type(None)) if typing.get_args(kind) else kind
            target.add_argument(flag, dest=item.name, type=TYPES[base], default=item.default, **spec)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a draft (--arch " + " | ".join(registry.names()) + ") for a target",
        description="Train a draft model on conversations (--data) or on precomputed target features (--features).",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_args(parser)
    add_config_options(parser)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options say (validated)."""
    values = {item.name: getattr(args, item.name) for item in cli_fields()}
    return TrainConfig(target=args.target, device=args.device, dtype=args.dtype, **values).validate()


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from beagle.models.params import parameter_formula
    from beagle.ranks import setup_distributed
    from beagle.training.trainer import Trainer

    config = config_from_args(args)
    dist, _ = setup_distributed(args.device, process_group=args.fsdp != "none")
    main = dist.is_main
    # Progress messages of the trainer (epoch results, checkpoints) are worth showing on the main rank.
    logging.getLogger("beagle.training").setLevel(logging.INFO if main else logging.WARNING)
    trainer = Trainer(config)  # loads the target (sharded with --fsdp target|both) and the data
    count = parameter_formula(trainer.draft.config)
    if main:
        print(f"{args.arch} draft for {args.target}: {count:,} parameters ({count / 1e6:.1f}M)", file=sys.stderr)
    if main and hasattr(trainer.dataset, "report"):
        print(f"data: {trainer.dataset.report.summary()}", file=sys.stderr)
    if main and trainer.draft.vocab is not None:
        print(f"draft vocabulary: {trainer.draft.vocab.describe()}", file=sys.stderr)
    try:
        out = trainer.run()
    finally:
        if dist.initialized and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if main:
        last = trainer.progress.history[-1] if trainer.progress.history else None
        if last and last.get("tau") is not None:
            rates = ", ".join(f"{rate:.3f}" for rate in last["acceptance"])
            print(f"held-out acceptance by position [{rates}], simulated tau {last['tau']:.2f}", file=sys.stderr)
        if last and "prompts" in last:
            rates = ", ".join(f"{rate:.3f}" for rate in last["prompts_acceptance"])
            print(f"on {last['prompts']} answers: acceptance by position [{rates}], simulated tau "
                  f"{last['prompts_tau']:.2f} (top-{last['prompts_top_k']} view {last['prompts_tau_topk']:.2f})",
                  file=sys.stderr)
        if last and config.keep_best and (out / "best").is_dir():
            print(f"best draft by {config.keep_best}: {out / 'best'}", file=sys.stderr)
        if trainer.peak_memory_gib:
            peaks = ", ".join(f"{value:.2f}" for value in trainer.peak_memory_gib)
            print(f"peak GPU memory by rank: {peaks} GiB", file=sys.stderr)
        print(f"draft written to {out} (step {trainer.progress.step})")
    return 0
