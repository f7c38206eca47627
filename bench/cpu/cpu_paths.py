"""CPU decoding paths side by side in one process: linear kernel, attention and KV cache (beagle.target_model).

Configurations, each a step on the one before (``--configs``; the last is what a CPU target gets by default):

- ``stock``: ``nn.functional.linear``, transformers' ``sdpa`` attention, transformers' ``DynamicCache``;
- ``columns``: the ``(W @ xᵀ)ᵀ`` small-batch kernel (the default before oneDNN);
- ``onednn``: oneDNN linears with pre-packed weights (``beagle.kernels.cpu_linear``);
- ``onednn+gqa``: + grouped-query SDPA with a mask without ``repeat_kv`` copies (``beagle.kernels.cpu_attention``);
- ``onednn+gqa+growing``: + a KV cache that grows in place (``beagle.target_model.cache.GrowingDynamicLayer``);
- ``onednn+gqa+growing+bf16-draft``: + the draft in bfloat16 (``--draft-dtype auto`` on a CPU with native bf16).

Two parts, SmolLM2-135M-Instruct in float32 with the shipped Beagle draft (float32 unless the configuration
says bf16-draft) and the demo's draft vocabulary:

1. One target pass after a 200-token context: a plain step (1 token, no mask) and a verification pass over
   k tokens (a tree mask), each with the LM head; --pass-repeats per configuration, interleaved; medians.
2. Plain decoding and speculative decoding (each --trees tree) on the first --questions MT-Bench questions,
   greedy, --max-new-tokens tokens. For every prompt each configuration runs AR and every tree, the
   configuration order rotating with the prompt. Tokens/s pool prompts and --repeats; speedups are against AR
   with the same configuration and against the fastest AR of the run.

    python bench/cpu/cpu_paths.py --questions 3 --max-new-tokens 96 --repeats 2 --out docs/results/cpu-paths.json

--out FILE.json also writes FILE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

CONFIGS = ("stock", "columns", "onednn", "onednn+gqa", "onednn+gqa+growing", "onednn+gqa+growing+bf16-draft")
PASS_TOKENS = (2, 3, 4, 6, 8, 10, 12, 16)


@contextlib.contextmanager
def configured(config: str, target):
    """Run the block with ``config``'s kernel, attention and cache on ``target`` (restored afterwards)."""
    from transformers import DynamicCache

    from beagle.target_model.cache import growing_dynamic_cache
    from beagle.kernels.cpu_attention import IMPLEMENTATION, register
    from beagle.kernels.cpu_linear import use_kernel

    kernel = {"stock": "stock", "columns": "columns"}.get(config, "onednn")
    register()
    before = target.model.config._attn_implementation
    target.model.set_attn_implementation(IMPLEMENTATION if "gqa" in config else "sdpa")
    target.new_cache = growing_dynamic_cache if "growing" in config else DynamicCache
    try:
        with use_kernel(kernel):
            yield
    finally:
        del target.new_cache  # the instance attribute; the class method again
        target.model.set_attn_implementation(before)


def draft_dtype(config: str) -> str:
    return "bfloat16" if config.endswith("bf16-draft") else "float32"


def pass_costs(target, configs, repeats: int) -> dict:
    """Median ms per configuration: 'step' (one token, no mask) and k = PASS_TOKENS (a verification pass)."""
    from beagle.target_model.session import DynamicSession

    generator = torch.Generator().manual_seed(0)
    context = torch.randint(0, target.vocab_size, (1, 200), generator=generator)
    times = {config: {key: [] for key in ("step", *PASS_TOKENS)} for config in configs}
    sessions = {}
    for config in configs:
        with configured(config, target):
            sessions[config] = DynamicSession(target)
            hidden = sessions[config].prefill(context)
            target.logits(hidden[:, -1:])  # packs the LM head (oneDNN) before timing
    for repeat in range(repeats):
        for config in (configs if repeat % 2 == 0 else configs[::-1]):
            session = sessions[config]
            with configured(config, target):
                start = time.perf_counter()
                target.logits(session.target.forward(torch.tensor([[7]]), session.cache))
                times[config]["step"].append(time.perf_counter() - start)
                session.cache.crop(-1)
                for k in PASS_TOKENS:
                    tokens = torch.randint(0, target.vocab_size, (k,), generator=generator)
                    positions = session.length + torch.arange(k)
                    ancestry = torch.tril(torch.ones(k, k, dtype=torch.bool))
                    start = time.perf_counter()
                    target.logits(session.verify(tokens, positions, ancestry))
                    times[config][k].append(time.perf_counter() - start)
                    session.cache.crop(-k)  # a negative count: every transformers 5.x
    return {config: {str(key): round(1000 * statistics.median(values), 2) for key, values in rows.items()}
            for config, rows in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft", default="smollm2-beagle")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--trees", default="2/2/3,2/6/8", help="depth/top_k/total,...")
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pass-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="FILE.json (FILE.md is written next to it)")
    args = parser.parse_args()
    configs = [item.strip() for item in args.configs.split(",") if item.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or not configs:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from beagle.cli.common import resolve_draft
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.decoding.tree import TreeSettings
    from beagle.models.checkpoint import load_draft
    from beagle.serving.demo import DEMO_VOCAB, mt_bench_prompts
    from beagle.target_model.model import load_target
    from beagle.vocab.core import load_vocab
    from vocab_sweep import parse_trees  # bench/cpu/vocab_sweep.py, next to this script

    target = load_target("smollm2", dtype="float32", device="cpu")
    drafts = {}
    for dtype in ("float32", "bfloat16"):
        drafts[dtype] = load_draft(resolve_draft(args.draft), target, dtype=dtype)
        drafts[dtype].set_vocab(load_vocab(DEMO_VOCAB))
    trees = parse_trees(args.trees)

    costs = pass_costs(target, configs, args.pass_repeats)
    print(json.dumps({"pass_ms": costs}), flush=True)

    prompts = [target.encode_chat([{"role": "user", "content": q["prompt"]}]) for q in mt_bench_prompts(args.questions)]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    generators = {dtype: {"ar": SpeculativeGenerator(target)} for dtype in drafts}
    for dtype, draft in drafts.items():
        for tree in trees:
            generators[dtype][f"beagle-{'/'.join(map(str, tree))}"] = SpeculativeGenerator(target, draft, TreeSettings(*tree))
    methods = list(generators["float32"])
    totals = {(config, method): {"tokens": 0, "seconds": 0.0, "passes": 0, "draft_s": 0.0, "verify_s": 0.0,
                                 "exact": 0, "turns": 0} for config in configs for method in methods}
    for config in configs:  # warm-up: packing, allocations
        with configured(config, target):
            for generator in generators[draft_dtype(config)].values():
                generator.generate(prompts[0], settings, max_new_tokens=8)
    turn = 0
    for repeat in range(args.repeats):
        for index, prompt in enumerate(prompts):
            shift = turn % len(configs)
            turn += 1
            for config in configs[shift:] + configs[:shift]:
                with configured(config, target):
                    reference = None
                    for method in methods:
                        output = generators[draft_dtype(config)][method].generate(prompt, settings)
                        if method == "ar":
                            reference = output.token_ids
                        row = totals[(config, method)]
                        row["tokens"] += output.stats.new_tokens
                        row["seconds"] += output.stats.time_total
                        row["passes"] += output.stats.target_passes
                        row["draft_s"] += output.stats.time_draft
                        row["verify_s"] += output.stats.time_verify
                        row["exact"] += int(output.token_ids == reference)
                        row["turns"] += 1
            print(f"repeat {repeat + 1} prompt {index + 1} done", file=sys.stderr, flush=True)

    best_ar = max(totals[(config, "ar")]["tokens"] / totals[(config, "ar")]["seconds"] for config in configs)
    rows = []
    for config in configs:
        ar = totals[(config, "ar")]["tokens"] / totals[(config, "ar")]["seconds"]
        for method in methods:
            row = totals[(config, method)]
            speed = row["tokens"] / row["seconds"]
            rows.append({"config": config, "method": method, "tokens_per_s": round(speed, 2),
                         "speedup_vs_ar_same_config": round(speed / ar, 3),
                         "speedup_vs_best_ar": round(speed / best_ar, 3),
                         "tau": round(row["tokens"] / row["passes"], 3) if method != "ar" else 1.0,
                         "round_ms": round(1000 * row["seconds"] / row["passes"], 2),
                         "draft_ms_per_round": round(1000 * row["draft_s"] / row["passes"], 2),
                         "verify_ms_per_round": round(1000 * row["verify_s"] / row["passes"], 2),
                         "exact_match": round(row["exact"] / row["turns"], 3), "turns": row["turns"]})
    report = {
        "command": "python " + shlex.join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "draft": args.draft, "draft_vocab": DEMO_VOCAB, "questions": args.questions,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "configs": configs,
        "pass_ms": costs, "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    costs = report["pass_ms"]
    keys = ["step", *map(str, PASS_TOKENS)]
    lines = [f"# CPU decoding paths: {report['draft']} + {report['draft_vocab']}, float32", "",
             f"Machine: {report['machine']}, {report['date']}. {report['questions']} MT-Bench questions (first turns), "
             f"greedy, {report['max_new_tokens']} new tokens, {report['repeats']} repeat(s); every configuration and "
             "method interleaved per prompt in one process.", "", "```bash", report["command"], "```", "",
             "## One target pass after 200 tokens, with the LM head (ms, median)", "",
             "`step`: one token, no mask (plain decoding). k: a verification pass over k tokens with a tree mask.", "",
             "| configuration | step | " + " | ".join(f"k={k}" for k in PASS_TOKENS) + " |",
             "|---|" + "---:|" * len(keys)]
    for config in report["configs"]:
        lines.append(f"| {config} | " + " | ".join(f"{costs[config][key]:.1f}" for key in keys) + " |")
    lines += ["", "## Decoding", "",
              "| configuration | method | tok/s | vs AR (same config) | vs fastest AR | τ | ms / round | "
              "draft ms / round | verify ms / round | exact = AR | turns |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['config']} | {row['method']} | {row['tokens_per_s']:.1f} | "
                     f"{row['speedup_vs_ar_same_config']:.2f}× | {row['speedup_vs_best_ar']:.2f}× | {row['tau']:.2f} | "
                     f"{row['round_ms']:.1f} | {row['draft_ms_per_round']:.1f} | {row['verify_ms_per_round']:.1f} | "
                     f"{row['exact_match']:.2f} | {row['turns']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
