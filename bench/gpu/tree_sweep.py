"""Which draft tree is fastest on a GPU? Sweep tree shapes for the shipped SmolLM2 drafts.

On a GPU, eager decoding of a small model is launch-bound: a 61-token verification pass costs about as
much as a one-token step (docs/results/cudnn-h200), so a bigger tree may buy acceptance almost for free —
until drafting more levels costs more than it gains. For each tree this runs AR, Beagle and EAGLE-2
interleaved per prompt (`beagle.bench.harness.run_benchmark`: bf16, the fast path (compiled unless
--no-compile), one warm-up per method, the same prompts in the same order, --temperature with seed 0)
for --budget seconds, and reports tokens/s, speedup over the AR of the same run, τ and acceptance by depth.
The AR pass is compiled once and serves every tree; each tree compiles its own verify pass and draft phases.

    PYTHONPATH=src python3 bench/gpu/tree_sweep.py --budget 45 --out $OUT/tree_sweep.json     # after staging
    PYTHONPATH=src python3 bench/gpu/tree_sweep.py --temperature 1 --trees 3/4/12,4/8/32,5/10/60 --out ...
"""

from __future__ import annotations

import argparse
import json

import torch

TREES = [(5, 10, 60), (4, 8, 32), (6, 10, 80), (7, 10, 100), (8, 12, 140)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=45.0, help="timed seconds per tree (prompts started)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--trees", default=None, help="depth/top_k/total,... (default: the built-in list)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--prompts", default="mt-bench", help="mt-bench | humaneval | sharegpt-heldout")
    parser.add_argument("--limit", type=int, default=80, help="prompts at most (the budget usually ends first)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="CUDA graphs only")
    parser.add_argument("--fast-attention", default="sdpa", choices=["sdpa", "grouped"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from beagle.bench.harness import run_benchmark
    from beagle.data.prompt_sets import load_prompts
    from beagle.decoding.sampling import GenerationSettings
    from beagle.decoding.tree import TreeSettings
    from beagle.models.checkpoint import load_draft
    from beagle.target_model.model import load_target

    trees = TREES if args.trees is None else [tuple(int(v) for v in t.split("/")) for t in args.trees.split(",")]
    target = load_target("smollm2", device=args.device, fast_attention=args.fast_attention)
    drafts = {"beagle": load_draft("smollm2-beagle", target), "eagle2": load_draft("smollm2-eagle2", target)}
    prompts = load_prompts(args.prompts, limit=args.limit)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0)
    rows = []
    for depth, top_k, total in trees:
        results = run_benchmark(target, drafts, prompts, settings, methods="ar,beagle,eagle2",
                                tree=TreeSettings(depth, top_k, total), noconcat=False, warmup_tokens=32,
                                progress=False, plots=False, time_budget=args.budget, compile=None if args.compile else False)
        summary = results["summary"]
        row = {"depth": depth, "top_k": top_k, "total_tokens": total,
               "prompts": results["prompts"]["completed"], "ar_tokens_per_s": summary["ar"]["tokens_per_s"]}
        for name in drafts:
            row[name] = {key: summary[name][key] for key in ("tokens_per_s", "speedup_vs_ar", "tau",
                                                             "acceptance_by_depth")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "dtype": str(target.dtype), "max_new_tokens": args.max_new_tokens,
              "temperature": args.temperature, "fast_attention": args.fast_attention, "prompts": args.prompts, "compile": args.compile,
              "budget_s_per_tree": args.budget, "rows": rows}
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
