"""``beagle self-prompts``: the target writes user prompts (Magpie-style), for training without a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
The target's chat template is rendered up to the start of a user turn and the target continues it: it writes
the kind of request it was tuned on. Samples are kept when clean (no control tokens, ended within
--max-prompt-tokens, --min-chars..--max-chars) and not near-duplicates of a kept one (character 5-gram
Jaccard >= --near-duplicate). The output (JSONL of {"index", "messages": [{"role": "user", ...}], "source"})
is answered by `beagle regenerate`:

  beagle self-prompts --target smollm2 --count 10000 --out prompts.jsonl
  beagle regenerate --target smollm2 --data prompts.jsonl --out answers.jsonl --max-length 1024
  beagle train --target smollm2 --data answers.jsonl --out runs/beagle

--mix sharegpt:0.5 makes half of the --count conversations come from another dataset (whole conversations,
deduplicated by their first user message; self-prompts duplicating them are dropped). Rerun the same command to
continue an interrupted run (samples are kept in OUT.partial/).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "self-prompts",
        help="let the target write user prompts (no dataset needed); answer them with `beagle regenerate`",
        description="Sample user prompts from the target's own chat template (Magpie-style), filtered and "
                    "deduplicated, into a JSONL file that `beagle regenerate` answers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", required=True, help="HF model folder or hub id ('smollm2' = SmolLM2-135M-Instruct)")
    parser.add_argument("--count", type=int, required=True, help="conversations in the output")
    parser.add_argument("--out", required=True, help="output JSONL file (.jsonl.gz: compressed)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    parser.add_argument("--max-prompt-tokens", type=int, default=128,
                        help="tokens per prompt at most; a longer sample is dropped (default 128)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per generate call (default 256 on CUDA, 16 on CPU)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same file (default 0)")
    parser.add_argument("--system", default=None, help="system message before the user turn (default: the template's)")
    parser.add_argument("--max-samples", type=int, default=None,
                        help="samples drawn at most (default 4 x the prompts wanted)")
    parser.add_argument("--min-chars", type=int, default=10, help="shorter prompts are dropped (default 10)")
    parser.add_argument("--max-chars", type=int, default=4000, help="longer prompts are dropped (default 4000)")
    parser.add_argument("--near-duplicate", type=float, default=0.7,
                        help="drop a prompt whose 5-gram Jaccard similarity with a kept one reaches this (default 0.7; "
                             "1 = exact duplicates only)")
    parser.add_argument("--charset", choices=["ascii", "latin"], default=None,
                        help="drop prompts with letters outside ASCII / the Latin script")
    parser.add_argument("--mix", action="append", default=[], metavar="DATA:FRACTION",
                        help="take FRACTION of --count conversations from DATA (a file, or 'sharegpt'); repeatable")
    parser.add_argument("--report", default=None, help="also write the report (counts, drop reasons, speed) as JSON")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def parse_mix(values: list[str]) -> list[tuple[str, float]]:
    from beagle.errors import BeagleError

    mix = []
    for value in values:
        source, _, fraction = value.rpartition(":")
        try:
            mix.append((source, float(fraction)))
        except ValueError:
            source = ""
        if not source:
            raise BeagleError(f"--mix takes DATA:FRACTION, e.g. sharegpt:0.5 (got {value!r})")
    return mix


def run(args: argparse.Namespace) -> int:
    from beagle.data.conversations import resolve_data_path
    from beagle.data.prompt_filters import PromptFilter
    from beagle.data.self_prompts import SelfPromptSettings, self_prompts_file
    from beagle.errors import DataError
    from beagle.target_model.model import load_target

    settings = SelfPromptSettings(count=args.count, temperature=args.temperature, top_p=args.top_p,
                                  max_prompt_tokens=args.max_prompt_tokens, batch_size=args.batch_size,
                                  seed=args.seed, system=args.system, max_samples=args.max_samples,
                                  mix=parse_mix(args.mix)).validate()
    rules = PromptFilter(min_chars=args.min_chars, max_chars=args.max_chars, charset=args.charset,
                         near_duplicate=None if args.near_duplicate == 1 else args.near_duplicate).validate()
    for source, _ in settings.mix:  # before the target loads
        if not resolve_data_path(source).is_file():
            raise DataError(f"no data file {source} (--mix)")
    if Path(args.out).exists():
        print(f"{args.out} already exists: nothing to do (delete it to sample again)", file=sys.stderr)
        return 0
    target = load_target(args.target, dtype=args.dtype, device=args.device)
    report = self_prompts_file(target, args.out, settings, rules, progress=not args.no_progress)
    print(report.summary(), file=sys.stderr)
    if report.kept < report.wanted:
        print(f"warning: only {report.kept} of {report.wanted} prompts passed the filters; raise --max-samples "
              "or --temperature", file=sys.stderr)
    print(f"prompts written to {args.out}")
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    return 0
