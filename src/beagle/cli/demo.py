"""``beagle demo``: SmolLM2 + the shipped Beagle draft on MT-Bench questions — plain vs speculative, same output."""

from __future__ import annotations

import argparse
import json
import sys

from beagle.cli.common import add_draft_dtype_arg, add_target_args, add_tree_args
from beagle.serving.demo import DEMO_DRAFT, DEMO_MAX_NEW_TOKENS, DEMO_QUESTIONS, DEMO_TARGET, DEMO_VOCAB


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="answer MT-Bench questions with SmolLM2, plainly and with the shipped Beagle draft",
        description="Fetch SmolLM2-135M-Instruct (first use), load the shipped Beagle draft, answer a few "
                    "MT-Bench questions greedily with plain decoding and with Beagle, and print whether the "
                    "outputs are identical, tokens/s for both, the speedup and τ.",
    )
    parser.add_argument("--questions", type=int, default=DEMO_QUESTIONS,
                        help=f"MT-Bench questions to answer (default {DEMO_QUESTIONS})")
    parser.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS,
                        help=f"new tokens per answer (default {DEMO_MAX_NEW_TOKENS})")
    add_target_args(parser, required=False, default=DEMO_TARGET)
    parser.add_argument("--draft", default=DEMO_DRAFT,
                        help=f"draft checkpoint folder or shipped draft name (default {DEMO_DRAFT!r})")
    parser.add_argument("--draft-vocab", default="auto", metavar="auto|none|FILE",
                        help=f"the draft vocabulary to propose from: auto (the draft's own, else {DEMO_VOCAB!r} "
                             f"with the default target), none (the full {DEMO_TARGET} vocabulary), or a vocabulary "
                             "file from `beagle vocab` (default auto)")
    add_draft_dtype_arg(parser)
    add_tree_args(parser)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beagle.cli.common import tree_settings
    from beagle.errors import BeagleError
    from beagle.serving.demo import (
        demo_draft_path,
        demo_vocab,
        format_overall,
        format_question,
        mt_bench_prompts,
        run_demo,
    )

    if args.max_new_tokens < 1:
        raise BeagleError(f"--max-new-tokens must be ≥ 1, got {args.max_new_tokens}")
    tree = tree_settings(args).validate()
    draft_path = demo_draft_path(args.draft)  # first: no download when there is no draft to show
    questions = mt_bench_prompts(args.questions)

    from beagle.models.checkpoint import load_draft
    from beagle.cli.common import hardware_args
    from beagle.target_model.model import load_target

    log = sys.stderr
    print(f"loading {args.target} (fetched on first use) and the draft {draft_path} ...", file=log, flush=True)
    target = load_target(args.target, dtype=args.dtype, device=args.device, **hardware_args(args))
    draft = load_draft(draft_path, target=target, dtype=args.draft_dtype)
    draft.set_vocab(demo_vocab(args.draft_vocab, draft, args.target))
    vocab = (f"draft vocabulary {draft.vocab.size} of {target.vocab_size} tokens" if draft.vocab is not None
             else f"full vocabulary ({target.vocab_size} tokens)")
    print(f"{target.name} on {target.device} ({str(target.dtype).replace('torch.', '')}), {draft.config.arch} draft "
          f"({str(draft.dtype).replace('torch.', '')}), "
          f"{vocab}, tree depth {tree.depth} / top-k {tree.top_k} / {tree.total_tokens} tokens", file=log)
    print(f"answering {len(questions)} MT-Bench question(s), greedy, ≤ {args.max_new_tokens} new tokens, "
          "plain then Beagle ...\n", file=log, flush=True)

    def show(index: int, result: dict) -> None:
        if not args.json:
            print(format_question(index, len(questions), result, questions[index]["category"]), flush=True)

    results = run_demo(target, draft, [q["prompt"] for q in questions], max_new_tokens=args.max_new_tokens,
                       tree=tree, concat=not args.no_concat, on_result=show)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print()
        print(format_overall(results))
    if not results["overall"]["agree"]:
        print("\nwarning: the speculative output differed from plain decoding on some questions; greedy decoding "
              "should be token-identical — please report this with the command line you used", file=sys.stderr)
        return 3
    return 0
