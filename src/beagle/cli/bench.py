"""``beagle bench``: AR, HF generate, HF prompt lookup and every draft on a prompt set, interleaved."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from beagle.cli.common import add_draft_dtype_arg, add_path_args, add_target_args, add_tree_args, decoding_path, resolve_draft, tree_settings
from beagle.errors import BeagleError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark drafts against AR, HF generate and HF prompt lookup",
        description=(
            "Run every method on every prompt in one interleaved run (per prompt turn every method, in a "
            "rotating order) and write results.json, results.md and PNG plots to --out. Methods: ar (our "
            "engine, no draft), hf (HF generate), hf-pld (HF prompt-lookup decoding, 10 tokens), each draft "
            "and, for Beagle drafts, <name>-noconcat."
        ),
    )
    add_target_args(parser)
    parser.add_argument("--draft", action="append", default=[],
                        help="draft checkpoint folder or shipped name (repeatable)")
    parser.add_argument("--draft-name", action="append", default=[],
                        help="name of the matching --draft in the results (repeatable; default: folder name)")
    add_draft_dtype_arg(parser)
    parser.add_argument("--prompts", required=True,
                        help="mt-bench, humaneval, sharegpt-heldout, or a JSONL file of "
                             '{"prompt"|"turns"|"messages", optional "category"}')
    parser.add_argument("--limit", type=int, default=None,
                        help="use N prompts, picked round-robin over the categories")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--seed", type=int, default=0, help="base seed; the n-th prompt turn uses seed + n")
    parser.add_argument("--methods", default="ar,hf,hf-static,hf-pld,drafts",
                        help="comma-separated: ar, ar-eager, hf, hf-static, hf-pld, drafts (all drafts) or draft "
                             "method names (default: ar,hf,hf-static,hf-pld,drafts)")
    parser.add_argument("--no-noconcat", action="store_true",
                        help="do not add the <name>-noconcat method for Beagle drafts")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds after which no new prompt is started (results cover the prompts done)")
    parser.add_argument("--warmup-tokens", type=int, default=64,
                        help="new tokens of the untimed warm-up generation per method (0 = none)")
    parser.add_argument("--cudnn-sdp", action="store_true",
                        help="keep PyTorch's cuDNN attention backend on (default: off, as everywhere in Beagle "
                             "unless BEAGLE_CUDNN_SDP=1; it re-plans every new attention shape, which stalls "
                             "AR and speculative decoding alike)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, help="output folder (results.json, results.md, *.png)")
    add_tree_args(parser)  # its --no-concat here: run Beagle drafts in no-concat mode only
    add_path_args(parser)  # for ar and the drafts (not the HF methods)
    parser.set_defaults(func=run)


def draft_names(paths: list[str], names: list[str]) -> list[str]:
    """Names for the drafts: --draft-name in order, else the shipped name / folder name, made unique."""
    if len(names) > len(paths):
        raise BeagleError(f"{len(names)} --draft-name given for {len(paths)} --draft")
    out: list[str] = []
    for index, path in enumerate(paths):
        name = names[index] if index < len(names) else Path(path.rstrip("/")).name or f"draft{index + 1}"
        if name in out:
            if index < len(names):
                raise BeagleError(f"--draft-name {name!r} is given twice")
            suffix = 2
            while f"{name}-{suffix}" in out:
                suffix += 1
            name = f"{name}-{suffix}"
        out.append(name)
    return out


def run(args: argparse.Namespace) -> int:
    from beagle.bench.harness import run_benchmark
    from beagle.data.prompt_sets import load_prompts
    from beagle.bench.report import markdown_table
    from beagle.decoding.sampling import GenerationSettings
    from beagle.models.checkpoint import load_draft
    from beagle.cli.common import hardware_args
    from beagle.target_model.model import load_target

    if args.no_concat and args.no_noconcat:
        raise BeagleError("--no-concat (only no-concat) and --no-noconcat (no no-concat) exclude each other")
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    ).validate()
    tree = tree_settings(args)
    names = draft_names(args.draft, args.draft_name)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from beagle.bench.harness import BASELINES

    known = {*BASELINES, "drafts", *names, *(f"{name}-noconcat" for name in names)}
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise BeagleError(f"unknown method(s) {', '.join(unknown)}: use {', '.join(BASELINES)}, drafts or a draft name "
                          f"({', '.join(names) or 'no --draft given'}; Beagle drafts also <name>-noconcat)")
    prompts = load_prompts(args.prompts, args.limit)
    target = load_target(args.target, dtype=args.dtype, device=args.device, **hardware_args(args))
    tree.validate(target.vocab_size)
    drafts, paths = {}, {}
    for name, given in zip(names, args.draft):
        path = resolve_draft(given)
        drafts[name] = load_draft(path, target=target, dtype=args.draft_dtype)
        paths[name] = str(path)
    if args.no_concat:  # Beagle drafts: the no-concat variant only
        methods = _only_noconcat(methods, drafts)
    results = run_benchmark(
        target,
        drafts,
        prompts,
        settings,
        methods=methods,
        out_dir=args.out,
        tree=tree,
        noconcat=not args.no_noconcat,
        warmup_tokens=args.warmup_tokens,
        time_budget=args.time_budget,
        progress=not args.no_progress,
        command=command_line(),
        prompt_source=args.prompts,
        draft_paths=paths,
        plots=not args.no_plots,
        cudnn_sdp=hardware_args(args)["cudnn_sdp"],
        **decoding_path(args),
    )
    print(markdown_table(results))
    skipped = results["prompts"]["skipped"]
    if skipped:
        print(f"({len(skipped)} prompt turns skipped: prompt + max_new_tokens exceed the target's context)")
    done = results["prompts"]
    if done.get("stopped_early"):
        print(f"(time budget spent: {done['completed']} of {done['count']} prompts benchmarked)")
    print()
    for key, path in results.get("outputs", {}).items():
        print(f"{key}: {path}")
    return 0


def command_line() -> str:
    """The command as typed: ``beagle ...`` when run through the entry point or ``python -m``."""
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program in ("beagle", "main.py", "__main__.py", "-m"):
        return shlex.join(["beagle", *sys.argv[1:]])
    return shlex.join(sys.argv)


def _only_noconcat(methods: list[str], drafts: dict) -> list[str]:
    beagle = {name for name, draft in drafts.items() if getattr(draft.config, "arch", None) == "beagle"}
    out: list[str] = []
    for method in methods:
        if method == "drafts":
            out += [f"{name}-noconcat" if name in beagle else name for name in drafts]
        elif method in beagle:
            out.append(f"{method}-noconcat")
        else:
            out.append(method)
    return out
