"""Which draft tree pays off on a CPU? Sweep tree shapes for the shipped SmolLM2 Beagle draft.

On a CPU a target pass costs roughly in proportion to the tokens it verifies, so the GPU default
(depth 5, top-k 10, 60 tokens) over-drafts. For each tree this runs our AR engine and the draft,
interleaved per prompt (`beagle.bench.harness.run_benchmark`), greedy, fp32, and prints tokens/s,
speedup over AR, τ and exact match. The first CPU tree (2/2/4) was picked from this sweep
(docs/results/cpu-tree-sweep.md, before small-batch linears); the current one, `beagle.decoding.tree.CPU_TREE`,
from bench/cpu/cpu_paths.py (docs/results/cpu-tree-sweep-onednn.md).

    python bench/cpu/tree_sweep.py --questions 3 --max-new-tokens 96 --out docs/results/cpu-tree-sweep.json
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

TREES = [(1, 1, 1), (2, 2, 4), (3, 3, 8), (4, 4, 16), (4, 6, 24), (5, 10, 60)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft", default="smollm2-beagle")
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from beagle.bench.harness import run_benchmark
    from beagle.cli.common import resolve_draft
    from beagle.decoding.sampling import GenerationSettings
    from beagle.decoding.tree import TreeSettings
    from beagle.models.checkpoint import load_draft
    from beagle.serving.demo import mt_bench_prompts
    from beagle.target_model.model import load_target

    target = load_target("smollm2", dtype="float32", device="cpu")
    draft = load_draft(resolve_draft(args.draft), target)
    prompts = [p["prompt"] for p in mt_bench_prompts(args.questions)]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    rows = []
    for depth, top_k, total in TREES:
        tree = TreeSettings(depth, top_k, total)
        results = run_benchmark(target, {"beagle": draft}, prompts, settings, methods="ar,beagle", tree=tree,
                                noconcat=False, warmup_tokens=8, progress=False, plots=False)
        ar, beagle = results["summary"]["ar"], results["summary"]["beagle"]
        row = {"depth": depth, "top_k": top_k, "total_tokens": total, "ar_tokens_per_s": ar["tokens_per_s"],
               "beagle_tokens_per_s": beagle["tokens_per_s"], "speedup": beagle["speedup_vs_ar"],
               "tau": beagle["tau"], "exact_match": beagle["exact_match"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__, "draft": args.draft, "questions": args.questions,
              "max_new_tokens": args.max_new_tokens, "rows": rows}
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
