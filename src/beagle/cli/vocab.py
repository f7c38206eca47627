"""``beagle vocab``: build a draft vocabulary from chat data, or give an existing draft one (no retraining)."""

from __future__ import annotations

import argparse
import json
import sys

from beagle.cli.common import add_target_args

COVERAGE_SIZES = (1024, 2048, 4096, 8192, 16384, 32768)

EPILOG = """\
A draft vocabulary is the set of target token ids a draft proposes from: drafting reads only those rows
of the target's LM head (top-k over N instead of V), verification is unchanged, so the output stays the
target's own. The N most frequent assistant tokens of the data are kept (ties: the smaller id), the
target's EOS / end-of-turn ids always. Coverage = the fraction of the data's assistant tokens (the tokens
a draft is trained to predict) whose id is kept.

examples:
  beagle vocab --target smollm2 --data sharegpt --limit 6000 --size 8192 --out smollm2-vocab-8192.safetensors
  beagle vocab --target smollm2 --data sharegpt --size 8192 --draft smollm2-beagle --out runs/beagle-v8192
  beagle vocab --target smollm2 --vocab smollm2-vocab-8192.safetensors --draft smollm2-eagle2 --out runs/eagle2-v8192
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "vocab",
        help="build a draft vocabulary (the N most frequent assistant tokens) or add one to a draft",
        description="Count the assistant tokens of chat data with the target's chat template, keep the N most "
                    "frequent (EOS ids always) and write a vocabulary file — or, with --draft, a new draft folder "
                    "that proposes from it (no retraining).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_args(parser, device_help="cuda or cpu (default: cpu, or cuda with --regenerate if available)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="conversations (ShareGPT / OpenAI messages / pre-tokenized, JSON or JSONL; "
                                       "'sharegpt' = the training split of the public ShareGPT dump); never the "
                                       "benchmark prompts you measure on")
    source.add_argument("--features", help="a `beagle datagen` folder (its token ids and assistant masks)")
    source.add_argument("--vocab", help="an existing vocabulary file (with --draft: apply it to that draft)")
    parser.add_argument("--size", type=int, default=None, help="N: tokens to keep (with --data / --features)")
    parser.add_argument("--out", required=True, help="the vocabulary file to write (.safetensors), or with --draft "
                                                     "the new draft folder (the draft + the vocabulary)")
    parser.add_argument("--draft", default=None, help="a draft folder or shipped name (smollm2-beagle, "
                                                      "smollm2-eagle2) to copy with the vocabulary into --out")
    parser.add_argument("--max-length", type=int, default=2048, help="truncate sequences to this many tokens (2048)")
    parser.add_argument("--limit", type=int, default=None, help="count the first N usable conversations only")
    parser.add_argument("--regenerate", action="store_true",
                        help="count the target's own greedy answers instead of the data's (cached; slow on a CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beagle.errors import BeagleError

    counting = args.data is not None or args.features is not None
    if counting and args.size is None:
        raise BeagleError("--size N is required with --data / --features (the number of tokens to keep)")
    if args.vocab is not None and args.size is not None:
        raise BeagleError("--size does not apply to --vocab FILE (the file decides the size)")
    if args.vocab is not None and args.draft is None:
        raise BeagleError("--vocab FILE needs --draft (the draft to give the vocabulary to)")
    if args.size is not None and args.size < 1:
        raise BeagleError(f"--size must be at least 1, got {args.size}")
    if args.regenerate and args.data is None:
        raise BeagleError("--regenerate works on --data conversations")
    if args.max_length < 2:
        raise BeagleError(f"--max-length must be at least 2, got {args.max_length}")
    if args.draft is not None:
        _check_draft(args.draft)
    from beagle.files import destination_path

    destination_path(args.out)  # a symbolic link is refused before the (slow) loading

    from beagle.cli.common import hardware_args
    from beagle.target_model.model import default_device, load_target

    device = args.device or (default_device() if args.regenerate else "cpu")
    log = sys.stderr
    print(f"loading {args.target} ...", file=log, flush=True)
    target = load_target(args.target, dtype=args.dtype, device=device, **hardware_args(args))
    vocab_size = int(target.vocab_size)
    report: dict = {"target": str(target.name), "target_vocab_size": vocab_size}
    if counting:
        counts, described = _count(args, target)
        from beagle.vocab.core import coverage_of_sizes
        from beagle.data.vocab_counts import vocab_from_counts

        if args.size > vocab_size:
            raise BeagleError(f"--size {args.size} exceeds the target's vocabulary ({vocab_size} tokens)")
        eos = sorted(target.eos_token_ids())
        vocab = vocab_from_counts(counts, args.size, target, described)
        table = coverage_of_sizes(counts, [n for n in COVERAGE_SIZES if n < vocab_size], eos)
        report.update({"data": described, "assistant_tokens": int(counts.sum()),
                       "distinct_tokens": int((counts > 0).sum()), "eos_ids": eos, "size": vocab.size,
                       "coverage": vocab.coverage, "coverage_by_size": {str(k): v for k, v in table.items()}})
        if not args.json:
            print(f"counted {report['assistant_tokens']:,} assistant tokens ({report['distinct_tokens']:,} distinct "
                  f"of {vocab_size:,}) in {described}")
            print("coverage of the N most frequent tokens:")
            for size, value in table.items():
                print(f"  N = {size:>6}: {100 * value:6.2f} %")
            print(f"kept {vocab.size:,} of {vocab_size:,} ids (EOS {eos} always) covering "
                  f"{100 * (vocab.coverage or 0):.2f} % of the assistant tokens")
    else:
        from beagle.vocab.core import load_vocab

        vocab = load_vocab(args.vocab, vocab_size, str(target.name))
        report.update({"vocab": args.vocab, "size": vocab.size, "coverage": vocab.coverage, "data": vocab.data})
        if not args.json:
            print(f"vocabulary {args.vocab}: {vocab.describe()}")
    if args.draft is not None:
        from beagle.models.checkpoint import load_draft
        from beagle.data.vocab_counts import write_draft_with_vocab

        load_draft(args.draft, target=target)  # the draft must fit this target (IncompatibleDraftError otherwise)
        out = write_draft_with_vocab(args.draft, vocab, args.out)
        report["draft"] = args.draft
    else:
        out = vocab.save(args.out)
    report["out"] = str(out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        what = f"draft {args.draft} with the vocabulary" if args.draft is not None else "vocabulary"
        print(f"{what} written to")
        print(out)
    return 0


def _check_draft(draft: str) -> None:
    from beagle.assets.shipped import resolve_draft_path
    from beagle.errors import BeagleError
    from beagle.models.checkpoint import CONFIG_NAME

    if not (resolve_draft_path(draft) / CONFIG_NAME).is_file():
        raise BeagleError(f"--draft {draft!r} is neither a shipped draft name (smollm2-beagle, smollm2-eagle2) nor "
                          "a draft checkpoint folder")


def _count(args, target):
    """Counts [V] of the assistant tokens of --data / --features, and a description of what was counted."""
    from beagle.data.vocab_counts import count_assistant_tokens, dataset_sequences, load_chat_examples

    progress = not args.no_progress
    if args.features is not None:
        from beagle.data.features import FeatureDataset

        dataset = FeatureDataset(args.features)
        dataset.check_target(target.fingerprint())
        count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
        counts = count_assistant_tokens(dataset_sequences(dataset, range(count)), int(target.vocab_size),
                                        progress=progress, total=count)
        return counts, f"{args.features} ({count} sequences)"
    data = args.data
    if args.regenerate:  # the same cached file `beagle train --regenerate` makes and reads
        from beagle.data.regenerate import RegenerateSettings, cached_regeneration, regenerate_file

        settings = RegenerateSettings(max_length=args.max_length, limit=args.limit)
        data = cached_regeneration(target, args.data, settings)
        regenerate_file(target, args.data, data, settings, progress=progress)
    examples, data_report = load_chat_examples(data, target.tokenizer, max_length=args.max_length,
                                               limit=args.limit, progress=progress)
    counts = count_assistant_tokens(((e.input_ids, e.loss_mask) for e in examples), int(target.vocab_size),
                                    progress=progress, total=len(examples))
    label = f"{args.data}{' (regenerated answers)' if args.regenerate else ''}"
    limit = f", first {args.limit}" if args.limit is not None else ""
    return counts, f"{label} ({len(examples)} conversations{limit}, max length {args.max_length})"
