"""Draft vocabularies for `driver.py vocab-bench`, in one process (one target load): what
`beagle vocab --features F --size N --out FILE` then `beagle vocab --vocab FILE --draft D --out D2` do, for every
size N and every draft, plus the shipped 8192-token vocabulary (counted over ShareGPT's answers).

    python bench/gpu/vocab_drafts.py FEATURES OUT DRAFT [DRAFT ...] --sizes 32768 16384 ...

Writes OUT/<draft name>-v<N>/ (and -v8192-shipped/) draft folders, OUT/vocabs.json (sizes, coverage of the
counted data, of the regenerated answers for the shipped one) and prints one written folder name per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from beagle.models.checkpoint import load_draft
from beagle.target_model.model import load_target
from beagle.data.features import FeatureDataset
from beagle.vocab.core import coverage_of_sizes, load_vocab
from beagle.data.vocab_counts import count_assistant_tokens, dataset_sequences, vocab_from_counts, write_draft_with_vocab

SHIPPED = Path(__file__).resolve().parents[2] / "drafts" / "smollm2-vocab-8192.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", help="a `beagle datagen` folder of the target (regenerated answers)")
    parser.add_argument("out")
    parser.add_argument("drafts", nargs="+", help="draft folders (their folder names name the outputs)")
    parser.add_argument("--sizes", type=int, nargs="+", required=True)
    parser.add_argument("--target", default="smollm2")
    args = parser.parse_args()

    target = load_target(args.target, dtype="float32", device="cpu")
    vocab_size = int(target.vocab_size)
    dataset = FeatureDataset(args.features)
    dataset.check_target(target.fingerprint())
    counts = count_assistant_tokens(dataset_sequences(dataset, range(len(dataset))), vocab_size)
    described = f"{args.features} ({len(dataset)} sequences)"
    vocabs = {f"v{n}": vocab_from_counts(counts, n, target, described) for n in args.sizes}
    if SHIPPED.is_file():
        vocabs["v8192-shipped"] = load_vocab(SHIPPED, vocab_size, str(target.name))
    eos = sorted(target.eos_token_ids())
    total = float(counts.sum())
    report = {
        "data": described, "assistant_tokens": int(total),
        "coverage_by_size": {str(k): v for k, v in coverage_of_sizes(counts, args.sizes, eos).items()},
        "vocabs": {name: {"size": v.size, "data": v.data, "coverage_own_data": v.coverage,
                          "coverage_regenerated": float(counts[v.ids].sum()) / total} for name, v in vocabs.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocabs.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["vocabs"], indent=1), file=sys.stderr)
    for draft in args.drafts:
        load_draft(draft, target=target)  # the draft must fit this target
        stem = Path(draft).name.removeprefix("smollm2-")
        for name, vocab in vocabs.items():
            write_draft_with_vocab(draft, vocab, out / f"{stem}-{name}")
            print(f"{stem}-{name}")


if __name__ == "__main__":
    main()
