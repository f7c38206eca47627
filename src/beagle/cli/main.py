"""Entry point of the ``beagle`` command.

Each subcommand lives in its own module under :mod:`beagle.cli` and exposes
``register(subparsers)``; heavy imports (torch, transformers) happen inside the
command's ``run`` so that ``beagle --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from beagle.errors import BeagleError

# Order is the order shown by ``beagle --help``.
SUBCOMMAND_MODULES = [
    "fetch",
    "info",
    "generate",
    "chat",
    "demo",
    "self_prompts",
    "regenerate",
    "datagen",
    "vocab",
    "train",
    "bench",
    "serve",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beagle",
        description="Beagle: cross-attention speculative decoding — lossless, faster generation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs (INFO level)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"beagle.cli.{name}")
        except ModuleNotFoundError as error:  # a subcommand not built yet in this checkout
            if error.name == f"beagle.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except BeagleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `beagle ... | head`: the reader went away; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
