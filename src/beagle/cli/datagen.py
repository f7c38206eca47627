"""``beagle datagen``: precompute the target's top hidden states for training (sharded safetensors)."""

from __future__ import annotations

import argparse
import sys

from beagle.cli.common import add_target_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "datagen",
        help="precompute target features (top hidden states) for `beagle train --features`",
        description="Run the frozen target over the conversations once and store its top states (bf16), "
                    "token ids and assistant masks in resumable safetensors shards.",
    )
    add_target_args(parser)
    parser.add_argument("--data", required=True, help="conversations: ShareGPT or OpenAI messages, JSON list or "
                                                       "JSONL ('sharegpt' = the training split of the public ShareGPT dump, held-out conversations excluded)")
    parser.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    parser.add_argument("--max-length", type=int, default=2048, help="truncate sequences to this many tokens")
    parser.add_argument("--shard-size", type=int, default=1000, help="sequences per shard (default 1000)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N usable conversations")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="tokens per target pass (default 16384)")
    parser.add_argument("--states-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beagle.errors import BeagleError
    from beagle.cli.common import hardware_args
    from beagle.target_model.model import load_target
    from beagle.data.batches import ChatDataset
    from beagle.data.features import DTYPES, estimate_disk_bytes, generate_features

    if args.shard_size <= 0:
        raise BeagleError("--shard-size must be positive")
    target = load_target(args.target, dtype=args.dtype, device=args.device, **hardware_args(args))
    dataset = ChatDataset.from_file(args.data, target.tokenizer, args.max_length, progress=not args.no_progress)
    print(f"data: {dataset.report.summary()}", file=sys.stderr)
    if args.limit is not None:
        dataset = ChatDataset(dataset.examples[: args.limit], dataset.report)
    states_dtype = DTYPES[args.states_dtype]
    tokens = sum(dataset.lengths)
    need = estimate_disk_bytes(tokens, target.hidden_size, states_dtype)
    print(
        f"{len(dataset)} sequences, {tokens:,} tokens x {target.hidden_size} dims ({args.states_dtype}): "
        f"needs about {_size(need)} in {args.out}",
        file=sys.stderr,
    )
    source = {"data": str(args.data), "max_length": args.max_length, "limit": args.limit,
              "report": dataset.report.to_dict()}
    out = generate_features(target, dataset, args.out, shard_size=args.shard_size, batch_tokens=args.batch_tokens,
                            states_dtype=states_dtype, source=source, progress=not args.no_progress)
    print(f"features written to {out}")
    return 0


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} bytes"
