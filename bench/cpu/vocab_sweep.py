"""Draft vocabulary sweep: τ, tokens/s and speedup over plain decoding for N ∈ {full, 32k, 16k, 8k, 4k, 2k}.

The shipped SmolLM2 draft(s) get training-free vocabularies (FR-Spec's route: no retraining) built from the
assistant tokens of ShareGPT *training* conversations (never the benchmark prompts): the first
--vocab-limit conversations of the training split, the drafts' own training data. For each tree, plain
decoding (our AR engine) and the draft at every N run interleaved per prompt with a rotating order
(`beagle.bench.harness.run_benchmark`, greedy, one warm-up per method); --repeats repeats the whole sweep and
the reported tokens/s pool all repeats. Also reported: each N's coverage of the vocabulary data (in-sample)
and of the target's own MT-Bench answers (the AR outputs of the run: out-of-sample), the exact match with AR,
and the drafting share of a round.

CPU (the demo's defaults were chosen from this; docs/results/cpu-vocab-sweep.md):

    PYTHONPATH=src python3 bench/cpu/vocab_sweep.py --questions 3 --max-new-tokens 96 --repeats 2 \
        --out docs/results/cpu-vocab-sweep.json

GPU (bf16, both drafts, GPU trees; after staging, see bench/gpu/README.md) — bench/gpu/vocab_sweep.py is this
script with those defaults:

    PYTHONPATH=src python3 bench/gpu/vocab_sweep.py --out $OUT/vocab-sweep/

--out FILE.json writes FILE.json and FILE.md; --out FOLDER/ writes FOLDER/results.json and FOLDER/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch

SIZES = "full,32768,16384,8192,4096,2048"
CPU_TREES = "2/2/4,3/3/8,4/4/16"
GPU_TREES = "5/10/60,4/8/32"


def parse_trees(text: str) -> list[tuple[int, int, int]]:
    try:
        trees = [tuple(int(value) for value in item.split("/")) for item in text.split(",") if item]
    except ValueError:
        trees = []
    if not trees or any(len(tree) != 3 for tree in trees):
        raise SystemExit(f"--trees {text!r}: expected depth/top_k/total,... e.g. 2/2/4,3/3/8")
    return trees


def parse_sizes(text: str) -> list[int | None]:
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "full":
            sizes.append(None)
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise SystemExit(f"--sizes: {item!r} is neither 'full' nor a positive integer")
    return sizes


def output_paths(out: str) -> tuple[Path, Path]:
    path = Path(out)
    if out.endswith("/") or path.is_dir() or not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        return path / "results.json", path / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, path.with_suffix(".md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="smollm2")
    parser.add_argument("--drafts", default="smollm2-beagle", help="comma-separated drafts (folders or shipped names)")
    parser.add_argument("--sizes", default=SIZES, help=f"draft vocabulary sizes, 'full' = none (default {SIZES})")
    parser.add_argument("--trees", default=None, help=f"depth/top_k/total,... (default CPU {CPU_TREES}, GPU {GPU_TREES})")
    parser.add_argument("--vocab-data", default="sharegpt", help="conversations to count (default: ShareGPT training split)")
    parser.add_argument("--vocab-limit", type=int, default=6000, help="first N conversations (default 6000)")
    parser.add_argument("--vocab-max-length", type=int, default=2048)
    parser.add_argument("--vocab-dir", default=None, help="also write each vocabulary file here")
    parser.add_argument("--questions", type=int, default=3, help="MT-Bench questions (first turns, the demo's)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=1, help="run the whole sweep this many times (pooled)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--shared-note", default=None, help="a sentence on machine load for the report")
    parser.add_argument("--out", required=True, help="FILE.json (+ FILE.md) or FOLDER/ (results.json + README.md)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from beagle.bench.harness import run_benchmark
    from beagle.bench.summary import summarize
    from beagle.decoding.sampling import GenerationSettings
    from beagle.decoding.tree import TreeSettings
    from beagle.models.checkpoint import load_draft
    from beagle.serving.demo import mt_bench_prompts
    from beagle.target_model.model import load_target
    from beagle.vocab.core import build_vocab
    from beagle.data.vocab_counts import count_assistant_tokens, load_chat_examples

    json_path, md_path = output_paths(args.out)
    trees = parse_trees(args.trees or (GPU_TREES if args.device.startswith("cuda") else CPU_TREES))
    sizes = parse_sizes(args.sizes)
    target = load_target(args.target, dtype=args.dtype, device=args.device)
    vocab_size = int(target.vocab_size)
    eos = sorted(target.eos_token_ids())

    print(f"counting assistant tokens of {args.vocab_data} (first {args.vocab_limit}) ...", file=sys.stderr, flush=True)
    examples, data_report = load_chat_examples(args.vocab_data, target.tokenizer, max_length=args.vocab_max_length,
                                               limit=args.vocab_limit, progress=False)
    counts = count_assistant_tokens(((e.input_ids, e.loss_mask) for e in examples), vocab_size)
    described = f"{args.vocab_data} (first {args.vocab_limit} conversations, max length {args.vocab_max_length})"
    vocabs = {size: build_vocab(counts, size, eos, target=str(target.name), data=described)
              for size in sizes if size is not None and size <= vocab_size}
    if args.vocab_dir:
        for size, vocab in vocabs.items():
            vocab.save(Path(args.vocab_dir) / f"{Path(str(target.name)).name}-vocab-{size}.safetensors")

    drafts, labels = {}, {}
    for draft_name in [d for d in args.drafts.split(",") if d]:
        short = Path(draft_name).name.replace("smollm2-", "")
        for size in sizes:
            if size is not None and size not in vocabs:
                continue
            draft = load_draft(draft_name, target)
            draft.set_vocab(vocabs[size] if size is not None else None)
            name = f"{short}-{size if size is not None else 'full'}"
            drafts[name] = draft
            labels[name] = {"draft": draft_name, "size": size or vocab_size, "full": size is None}

    prompts = [p["prompt"] for p in mt_bench_prompts(args.questions)]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    methods = "ar," + ",".join(drafts)
    rows = []
    for depth, top_k, total in trees:
        tree = TreeSettings(depth, top_k, total)
        records = []
        for repeat in range(args.repeats):
            results = run_benchmark(target, drafts, prompts, settings, methods=methods, tree=tree, noconcat=False,
                                    warmup_tokens=8 if repeat == 0 else 0, progress=False, plots=False)
            records.extend(results["records"])
        summary = summarize(records, ["ar", *drafts])
        answers = [token for record in records for token in record["methods"]["ar"]["token_ids"]]
        answer_counts = torch.bincount(torch.tensor(answers, dtype=torch.long), minlength=vocab_size)
        for name, draft in drafts.items():
            mine = summary[name]
            vocab = draft.vocab
            per_turn = [r["methods"][name]["tokens_per_s"] / r["methods"]["ar"]["tokens_per_s"] for r in records
                        if r["methods"]["ar"]["tokens_per_s"]]
            times = [r["methods"][name].get("stats", {}).get("time_s", {}) for r in records]
            draft_time = sum(t.get("draft") or 0.0 for t in times)
            verify_time = sum(t.get("verify") or 0.0 for t in times)
            total_time = sum(t.get("total") or 0.0 for t in times)
            rounds = mine.get("rounds") or 0
            row = {
                "depth": depth, "top_k": top_k, "total_tokens": total, "method": name, **labels[name],
                "coverage_vocab_data": 1.0 if vocab is None else vocab.coverage,
                "coverage_answers": 1.0 if vocab is None else float(answer_counts[vocab.ids].sum()) / max(len(answers), 1),
                "ar_tokens_per_s": summary["ar"]["tokens_per_s"], "tokens_per_s": mine["tokens_per_s"],
                "speedup": mine["speedup_vs_ar"], "median_turn_speedup": statistics.median(per_turn) if per_turn else None,
                "tau": mine["tau"], "exact_match": mine["exact_match"],
                "draft_share": draft_time / total_time if total_time and draft_time else None,
                "draft_ms_per_round": 1000 * draft_time / rounds if rounds and draft_time else None,
                "verify_ms_per_round": 1000 * verify_time / rounds if rounds and verify_time else None,
                "ar_ms_per_token": 1000 / summary["ar"]["tokens_per_s"] if summary["ar"]["tokens_per_s"] else None,
                "turns": mine["samples"],
            }
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)

    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
               if not args.device.startswith("cuda") else torch.cuda.get_device_name())
    report = {
        "command": "PYTHONPATH=src python3 bench/cpu/vocab_sweep.py " + shlex.join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(), "machine": machine, "device": args.device,
        "cpu_count": __import__("os").cpu_count(), "torch": torch.__version__, "dtype": str(target.dtype),
        "target": str(target.name), "drafts": args.drafts, "questions": args.questions,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "shared_note": args.shared_note,
        "vocab_data": described, "vocab_data_report": data_report.summary(),
        "vocab_data_assistant_tokens": int(counts.sum()), "eos_ids": eos, "rows": rows,
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report) + "\n")
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)


def markdown(report: dict) -> str:
    """The results table (one row per tree × method)."""

    def number(value, digits=2, suffix=""):
        return "–" if value is None else f"{value:.{digits}f}{suffix}"

    lines = [
        f"# Draft vocabulary sweep: {report['target']} + {report['drafts']}, {report['dtype'].replace('torch.', '')}",
        "",
        f"Machine: {report['machine']} ({report['device']}, {report['cpu_count']} CPUs), torch {report['torch']}, "
        f"{report['date']}. {report['questions']} MT-Bench questions (first turns), greedy, "
        f"{report['max_new_tokens']} new tokens, {report['repeats']} repeat(s); AR and every draft interleaved per "
        "prompt. Vocabularies: the N most frequent assistant tokens of "
        f"{report['vocab_data']} ({report['vocab_data_assistant_tokens']:,} tokens; EOS {report['eos_ids']} kept)."
        + (f" {report['shared_note']}" if report.get("shared_note") else ""),
        "",
        "```bash",
        report["command"],
        "```",
        "",
        "| tree | method | N | coverage (vocab data) | coverage (AR answers) | AR tok/s | tok/s | speedup | "
        "median turn speedup | τ | draft ms / round | verify ms / round | AR ms / token | exact = AR |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['depth']}/{row['top_k']}/{row['total_tokens']} | {row['method']} | "
            f"{'full' if row['full'] else row['size']} | {number(100 * row['coverage_vocab_data'], 1, ' %')} | "
            f"{number(100 * row['coverage_answers'], 1, ' %')} | {number(row['ar_tokens_per_s'], 1)} | "
            f"{number(row['tokens_per_s'], 1)} | {number(row['speedup'], 2, '×')} | "
            f"{number(row['median_turn_speedup'], 2, '×')} | {number(row['tau'], 2)} | "
            f"{number(row.get('draft_ms_per_round'), 1)} | {number(row.get('verify_ms_per_round'), 1)} | "
            f"{number(row.get('ar_ms_per_token'), 1)} | {number(row['exact_match'], 2)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
