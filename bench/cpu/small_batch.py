"""Stock vs small-batch linears on a CPU (beagle.target.cpu_linear), side by side in one process.

Two parts, both with SmolLM2-135M-Instruct in float32 and the shipped Beagle draft with the demo's draft
vocabulary:

1. The cost of one target pass over k tokens (k = 1..8) after a 200-token context. This is what a verification
   round costs against a plain one-token step. Each kernel runs --pass-repeats times, interleaved; the median
   is reported.
2. Plain decoding and speculative decoding (each --trees tree) on the first --questions MT-Bench questions,
   greedy, --max-new-tokens tokens. For every prompt, each kernel runs AR and then every tree. Tokens/s are
   pooled over prompts and --repeats. Speedups are against AR with the *same* kernels, and against the faster
   of the two ARs (the fastest plain method in the run).

    python bench/cpu/small_batch.py --questions 3 --max-new-tokens 96 --repeats 2 --out docs/results/cpu-small-batch.json

--out FILE.json also writes FILE.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

KERNELS = ("stock", "small-batch")


def set_kernels(kernel: str, *modules) -> None:
    from beagle.target.cpu_linear import install_small_batch_linear, uninstall_small_batch_linear

    for module in modules:
        uninstall_small_batch_linear(module)
        if kernel == "small-batch":
            install_small_batch_linear(module)


def pass_costs(target, draft, repeats: int) -> dict:
    """Median ms of one target pass (decoder + LM head) over k tokens after 200 tokens of context."""
    generator = torch.Generator().manual_seed(0)
    context = torch.randint(0, target.vocab_size, (1, 200), generator=generator)
    cache = target.new_cache()
    target.forward(context, cache)
    times: dict[str, dict[int, list[float]]] = {kernel: {k: [] for k in range(1, 9)} for kernel in KERNELS}
    for _ in range(repeats):
        for kernel in KERNELS:
            set_kernels(kernel, target.model, draft)
            for k in range(1, 9):
                tokens = torch.randint(0, target.vocab_size, (1, k), generator=generator)
                start = time.perf_counter()
                target.logits(target.forward(tokens, cache))
                times[kernel][k].append(time.perf_counter() - start)
                cache.crop(-k)  # drop the k tokens again (a negative count: every transformers version)
    return {kernel: {k: 1000 * statistics.median(v) for k, v in rows.items()} for kernel, rows in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft", default="smollm2-beagle")
    parser.add_argument("--trees", default="2/2/3,2/2/4", help="depth/top_k/total,...")
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pass-repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="FILE.json (FILE.md is written next to it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from beagle.cli.common import resolve_draft
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.decoding.tree import TreeSettings
    from beagle.models.checkpoint import load_draft
    from beagle.serving.demo import DEMO_VOCAB, mt_bench_prompts
    from beagle.target.model import load_target
    from beagle.vocab.core import load_vocab
    from vocab_sweep import parse_trees  # bench/cpu/vocab_sweep.py, next to this script

    target = load_target("smollm2", dtype="float32", device="cpu")
    draft = load_draft(resolve_draft(args.draft), target)
    draft.set_vocab(load_vocab(DEMO_VOCAB))
    trees = parse_trees(args.trees)

    costs = pass_costs(target, draft, args.pass_repeats)
    print(json.dumps({"pass_ms": costs}), flush=True)

    prompts = [target.encode_chat([{"role": "user", "content": q["prompt"]}]) for q in mt_bench_prompts(args.questions)]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    generators = {"ar": SpeculativeGenerator(target)}
    for tree in trees:
        generators[f"beagle-{'/'.join(map(str, tree))}"] = SpeculativeGenerator(target, draft, TreeSettings(*tree))
    methods = list(generators)
    totals = {(kernel, method): {"tokens": 0, "seconds": 0.0, "passes": 0, "exact": 0, "turns": 0}
              for kernel in KERNELS for method in methods}
    set_kernels("small-batch", target.model, draft)
    for generator in generators.values():  # warm-up
        generator.generate(prompts[0], settings, max_new_tokens=8)
    for repeat in range(args.repeats):
        for index, prompt in enumerate(prompts):
            order = KERNELS if (repeat + index) % 2 == 0 else KERNELS[::-1]
            for kernel in order:
                set_kernels(kernel, target.model, draft)
                reference = None
                for method in methods:
                    output = generators[method].generate(prompt, settings)
                    if method == "ar":
                        reference = output.token_ids
                    row = totals[(kernel, method)]
                    row["tokens"] += output.stats.new_tokens
                    row["seconds"] += output.stats.time_total
                    row["passes"] += output.stats.target_passes
                    row["exact"] += int(output.token_ids == reference)
                    row["turns"] += 1
                print(f"repeat {repeat + 1} prompt {index + 1} {kernel} done", file=sys.stderr, flush=True)
    set_kernels("small-batch", target.model, draft)

    best_ar = max(totals[(kernel, "ar")]["tokens"] / totals[(kernel, "ar")]["seconds"] for kernel in KERNELS)
    rows = []
    for kernel in KERNELS:
        ar = totals[(kernel, "ar")]["tokens"] / totals[(kernel, "ar")]["seconds"]
        for method in methods:
            row = totals[(kernel, method)]
            speed = row["tokens"] / row["seconds"]
            rows.append({"kernel": kernel, "method": method, "tokens_per_s": round(speed, 2),
                         "speedup_vs_ar_same_kernel": round(speed / ar, 3),
                         "speedup_vs_best_ar": round(speed / best_ar, 3),
                         "tau": round(row["tokens"] / row["passes"], 3) if method != "ar" else 1.0,
                         "exact_match": round(row["exact"] / row["turns"], 3), "turns": row["turns"]})
    report = {
        "command": "python " + shlex.join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "draft": args.draft, "draft_vocab": DEMO_VOCAB, "questions": args.questions,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "pass_ms": costs, "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    costs = report["pass_ms"]
    lines = [f"# Stock vs small-batch linears on a CPU: {report['draft']} + {report['draft_vocab']}, float32", "",
             f"Machine: {report['machine']}, {report['date']}. {report['questions']} MT-Bench questions (first turns), "
             f"greedy, {report['max_new_tokens']} new tokens, {report['repeats']} repeat(s); both kernels and every "
             "method interleaved per prompt in one process.", "", "```bash", report["command"], "```", "",
             "## One target pass over k tokens (ms, median; 200 tokens of context)", "",
             "| kernel | " + " | ".join(f"k={k}" for k in range(1, 9)) + " |",
             "|---|" + "---:|" * 8]
    for kernel in KERNELS:
        lines.append(f"| {kernel} | " + " | ".join(f"{costs[kernel][k]:.1f}" for k in range(1, 9)) + " |")
    lines += ["", "## Decoding", "",
              "| kernel | method | tok/s | vs AR (same kernel) | vs fastest AR | τ | exact = AR | turns |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['kernel']} | {row['method']} | {row['tokens_per_s']:.1f} | "
                     f"{row['speedup_vs_ar_same_kernel']:.2f}× | {row['speedup_vs_best_ar']:.2f}× | {row['tau']:.2f} | "
                     f"{row['exact_match']:.2f} | {row['turns']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
