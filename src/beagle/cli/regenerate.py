"""``beagle regenerate``: replace every assistant turn of a conversations file by the target's own greedy answer."""

from __future__ import annotations

import argparse
import json
import sys

from beagle.cli.common import add_target_args

EPILOG = """\
Each assistant turn becomes the target's greedy answer to the conversation so far (earlier answers already
regenerated), rendered with its chat template. The output (JSONL of {"index", "messages"}; .gz compresses)
is read by `beagle train --data` and `beagle datagen`. It appears only when complete: rerun the same command
to continue an interrupted run (finished conversations are kept in OUT.partial/). Under
`torchrun --nproc-per-node N -m beagle.cli.main regenerate ...` every rank takes a shard of the records.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "regenerate",
        help="replace the assistant turns of conversations by the target's own greedy answers",
        description="Regenerate training conversations with the target (greedy), once, into a JSONL file that "
                    "`beagle train --data` and `beagle datagen` read.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_args(parser)
    parser.add_argument("--data", required=True, help="conversations: ShareGPT or OpenAI messages, JSON list or JSONL "
                                                      "('sharegpt' = the training split of the public ShareGPT dump)")
    parser.add_argument("--out", required=True, help="output JSONL file (.jsonl.gz: compressed)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per answer at most (default 1024)")
    parser.add_argument("--max-length", type=int, default=2048,
                        help="conversation length in tokens: no turn starts there, no answer runs past it "
                             "(default 2048; use the training --max-length)")
    parser.add_argument("--max-turns", type=int, default=None, help="regenerate only the first N assistant turns")
    parser.add_argument("--limit", type=int, default=None, help="only the first N usable conversations")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per generate call (default 256 on CUDA, 8 on CPU)")
    parser.add_argument("--refill-every", type=int, default=64,
                        help="new tokens per generate call; finished rows are refilled in between (default 64)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds: start no new conversation after that (the output then holds those started)")
    parser.add_argument("--report", default=None,
                        help="also write the report (counts, drop reasons, tokens/s) as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from beagle.errors import DataError
    from beagle.cli.common import hardware_args
    from beagle.target_model.model import load_target
    from beagle.data.conversations import resolve_data_path
    from beagle.ranks import launched_by_torchrun, setup_distributed
    from beagle.data.regenerate import RegenerateSettings, regenerate_file

    settings = RegenerateSettings(max_new_tokens=args.max_new_tokens, max_length=args.max_length,
                                  max_turns=args.max_turns, limit=args.limit, batch_size=args.batch_size,
                                  refill_every=args.refill_every, time_budget=args.time_budget).validate()
    if not resolve_data_path(args.data).is_file():  # before the target loads
        raise DataError(f"no data file {args.data}")
    dist, device = setup_distributed(args.device, process_group=launched_by_torchrun())
    try:
        target = load_target(args.target, dtype=args.dtype, device=str(device), **hardware_args(args))
        report = regenerate_file(target, args.data, args.out, settings, dist, progress=not args.no_progress)
    finally:
        if dist.initialized and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if dist.is_main:
        if report.existed:
            print(f"{args.out} already exists: nothing to do (delete it to regenerate)", file=sys.stderr)
            return 0
        print(report.summary(), file=sys.stderr)
        print(f"regenerated conversations written to {args.out}")
        if args.report:
            from beagle.files import atomic_file

            with atomic_file(args.report, "--report") as temporary:
                temporary.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    return 0
