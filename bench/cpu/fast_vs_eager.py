"""Which decoding path is faster on a CPU: the eager path or the fixed-shape fast path (no CUDA graphs there)?

SmolLM2-135M-Instruct (fp32) with the shipped Beagle draft, the demo's tree, greedy; for each MT-Bench question
every variant runs once, interleaved (AR and Beagle, eager and fast). Prints a JSON summary.

    PYTHONPATH=src python bench/cpu/fast_vs_eager.py --questions 3 --max-new-tokens 64 --out /tmp/fast_vs_eager.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from beagle.data.prompt_sets import load_prompts, prompt_ids
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.decoding.tree import TreeSettings
    from beagle.models.checkpoint import load_draft
    from beagle.target_model.model import load_target

    target = load_target("smollm2", dtype="float32", device="cpu")
    draft = load_draft("smollm2-beagle", target)
    tree = TreeSettings(depth=2, top_k=2, total_tokens=4)  # the demo's CPU tree
    variants = {
        "ar-eager": SpeculativeGenerator(target, fast=False),
        "ar-fast": SpeculativeGenerator(target, fast=True),
        "beagle-eager": SpeculativeGenerator(target, draft, tree, fast=False),
        "beagle-fast": SpeculativeGenerator(target, draft, tree, fast=True),
    }
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    prompts = [prompt_ids(target, prompt, 0) for prompt in load_prompts("mt-bench", args.questions)]
    for generator in variants.values():  # warm-up
        generator.generate(prompts[0], GenerationSettings(max_new_tokens=8))
    totals = {name: [0, 0.0] for name in variants}
    outputs = {}
    for index, ids in enumerate(prompts):
        names = list(variants)[index % len(variants):] + list(variants)[: index % len(variants)]
        for name in names:
            started = time.perf_counter()
            out = variants[name].generate(ids, settings)
            totals[name][0] += len(out.token_ids)
            totals[name][1] += time.perf_counter() - started
            outputs.setdefault(name, []).append(out.token_ids)
    summary = {name: {"tokens_per_s": round(tokens / seconds, 2), "tokens": tokens} for name, (tokens, seconds)
               in totals.items()}
    summary["identical_outputs"] = all(outputs[name] == outputs["ar-eager"] for name in outputs)
    summary["threads"] = torch.get_num_threads()
    summary["command"] = f"python bench/cpu/fast_vs_eager.py --questions {args.questions} --max-new-tokens {args.max_new_tokens}"
    print(json.dumps(summary, indent=2))
    Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
