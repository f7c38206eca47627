"""``beagle generate``: one prompt (or a chat turn) through the target, speculatively with --draft."""

from __future__ import annotations

import argparse
import json
import sys

from beagle.cli.common import add_draft_args, add_sampling_args, add_target_args, build_generator, generation_settings
from beagle.errors import BeagleError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text (speculatively with --draft, losslessly)",
        description="Generate a continuation. Without --draft it decodes autoregressively through the same engine.",
    )
    add_target_args(parser)
    add_draft_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text (with --chat: the user message)")
    source.add_argument("--prompt-file", help="read the prompt from a file ('-' = stdin)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn with the chat template")
    add_sampling_args(parser)
    parser.add_argument("--json", action="store_true", help='print {"text", "token_ids", "stats"} as one JSON object')
    parser.add_argument("--stream", action="store_true", help="print text as it is accepted")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if args.prompt_file:
        try:
            prompt = sys.stdin.read() if args.prompt_file == "-" else open(args.prompt_file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as error:
            raise BeagleError(f"cannot read --prompt-file {args.prompt_file}: {error}") from error
    if not prompt:
        raise BeagleError("the prompt is empty")
    settings = generation_settings(args)
    generator = build_generator(args)
    target = generator.target
    prompt_ids = target.encode_chat([{"role": "user", "content": prompt}]) if args.chat else target.encode(prompt)
    if args.stream and not args.json:
        for chunk in generator.stream(prompt_ids, settings):
            print(chunk, end="", flush=True)
        print()
        _print_summary(generator.last_stats, file=sys.stderr)
        return 0
    output = generator.generate(prompt_ids, settings)
    if args.json:
        print(json.dumps(output.to_dict()))
    else:
        print(output.text)
        _print_summary(output.stats, file=sys.stderr)
    return 0


def _print_summary(stats, file) -> None:
    print(
        f"[{stats.new_tokens} tokens, {stats.target_passes} target passes, tau {stats.tau:.2f}, "
        f"{stats.tokens_per_s:.1f} tokens/s]",
        file=file,
    )
