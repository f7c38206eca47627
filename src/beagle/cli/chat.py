"""``beagle chat``: interactive multi-turn chat in the terminal, streamed as tokens are accepted."""

from __future__ import annotations

import argparse
import sys

from beagle.cli.common import add_draft_args, add_sampling_args, add_target_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="interactive multi-turn chat (speculatively with --draft)",
        description="Chat with the target through its chat template. Replies stream as tokens are accepted; "
                    "after each reply a status line shows τ (tokens per target pass) and tokens/s. "
                    "Commands: /stats, /reset, /help, /exit. Ctrl-C stops a reply; Ctrl-D or Ctrl-C at the "
                    "prompt exits. Lines can be piped in on stdin.",
    )
    add_target_args(parser)
    add_draft_args(parser)
    add_sampling_args(parser, max_new_tokens=512)
    parser.add_argument("--system", default=None, help="system message that starts the conversation")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beagle.cli.common import build_generator, generation_settings
    from beagle.serving.chat import run_chat

    settings = generation_settings(args)
    generator = build_generator(args)
    if sys.stdin.isatty():
        try:  # line editing and history for input()
            import readline  # noqa: F401
        except ImportError:
            pass
    return run_chat(generator, settings, system=args.system)
