"""Scale check: the cost of one speculative round on an 8B-shaped target, split by phase.

Random weights (Llama-3.1-8B shape; vocab 128256), bf16, batch 1, a random Beagle draft.
Phases of one round, each timed with CUDA synchronisation (median over rounds):
  draft        build_tree: draft forwards + top-k + rerank (depth 5 / top-k 10 / 60 tokens)
  tree_mask    ancestry matrix + additive verification mask
  verify       the target forward over root + 60 tree tokens
  accept       target choices + acceptance walk + KV-cache compaction
  draft_commit draft.start_round (K/V of accepted true states + next root)
and, for reference, plain AR decoding (ms per token; on CUDA with cuDNN attention on and off) and one
target forward of 61 tokens. round_over_ar_token divides by the faster AR setting.

PyTorch's cuDNN attention is off, as in every Beagle entry point on CUDA (--cudnn-sdp keeps it on, to
measure what its per-shape planning costs: see beagle.kernels.attention_backend).

    PYTHONPATH=src python bench/gpu/round_cost.py --out $OUT/round_cost.json          # GPU
    PYTHONPATH=src python bench/gpu/round_cost.py --tiny --out /tmp/round_cost.json    # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from beagle.kernels.attention_backend import cudnn_sdp_backend


def build(tiny: bool, device: str, shape: str = "llama-3.1-8b", layers: int = 32):
    from beagle.models.checkpoint import build_draft
    from random_models import random_target

    dtype = torch.float32 if tiny else torch.bfloat16
    target = random_target("tiny" if tiny else shape, 2 if tiny else layers, device, dtype)
    draft = build_draft(target, "beagle").to(dtype)
    return target, draft


def profile_rounds(run_round, folder: str, device: str, rounds: int = 3) -> None:
    """torch.profiler over ``rounds`` rounds, each phase under record_function: per-op tables sorted by
    host time (launch overhead shows there) and device time, the op count per phase, a Chrome trace."""
    from torch.profiler import ProfilerActivity, profile, record_function

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as profiler:
        for _ in range(rounds):
            run_round(lambda name: record_function(f"phase::{name}"))
    events = profiler.key_averages()
    (out / "by_host_time.txt").write_text(events.table(sort_by="cpu_time_total", row_limit=60))
    device_key = "cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    (out / "by_device_time.txt").write_text(events.table(sort_by=device_key, row_limit=60))
    (out / "by_shape.txt").write_text(profiler.key_averages(group_by_input_shape=True).table(
        sort_by="cpu_time_total", row_limit=80))
    # Operators launched inside each phase (direct + nested), per round.
    counts: dict[str, int] = {}
    for event in profiler.events():
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("phase::"):
            parent = parent.cpu_parent
        if parent is not None and event.name.startswith("aten::"):
            counts[parent.name] = counts.get(parent.name, 0) + 1
    (out / "aten_ops_per_phase.json").write_text(json.dumps({k: v / rounds for k, v in sorted(counts.items())},
                                                            indent=2))
    profiler.export_chrome_trace(str(out / "trace.json"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--shape", default="llama-3.1-8b", help="random_models.SHAPES key (smollm2: 30 layers)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 32; smollm2 30)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile", default=None, help="also profile 3 rounds: tables and a trace into this folder")
    parser.add_argument("--cudnn-sdp", action="store_true",
                        help="keep PyTorch's cuDNN attention on (Beagle turns it off on CUDA: it re-plans every shape)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with cudnn_sdp_backend(args.cudnn_sdp if device == "cuda" else None):
        measure(args, device)


def measure(args, device: str) -> None:

    from beagle.decoding.sampling import GenerationSettings, choose_tokens
    from beagle.decoding.tree import TreeSettings, build_tree
    from beagle.decoding.verify import accept_path
    from beagle.target_model.cache import keep_cache_entries, tree_attention_mask

    layers = args.layers or (30 if args.shape == "smollm2" else 32)
    target, draft = build(args.tiny, device, args.shape, layers)
    settings = GenerationSettings(max_new_tokens=1)
    tree_settings = TreeSettings(5, 10, 60)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {k: [] for k in ("draft", "tree_mask", "verify", "accept", "draft_commit",
                                                      "forward_61_tokens")}
    with torch.no_grad():
        prompt = torch.randint(0, target.vocab_size, (1, args.context), device=device)
        cache = target.new_cache()
        hidden = target.forward(prompt, cache)
        token = int(target.logits(hidden[:, -1]).argmax())
        draft_cache = draft.new_cache(capacity=args.context + 64 * (args.rounds + 4))
        root_hidden = draft.start_round(draft_cache, prompt[0], hidden[0], 0, token)
        state = {"position": args.context, "token": token, "root_hidden": root_hidden}

        def run_round(label=lambda name: contextlib.nullcontext()):
            """One round from state; returns the five phase durations (s)."""
            position, token = state["position"], state["token"]
            sync(); t0 = time.perf_counter()
            with label("draft"):
                tree = build_tree(draft, draft_cache, state["root_hidden"], tree_settings)
                draft_cache.reset_tree()
            sync(); t1 = time.perf_counter()
            with label("tree_mask"):
                inputs = torch.cat([torch.tensor([token], device=device), tree.tokens])[None]
                positions = position + torch.cat([torch.zeros(1, dtype=torch.long, device=device), tree.depths])
                mask = tree_attention_mask(position, tree.ancestry(), target.dtype)
            sync(); t2 = time.perf_counter()
            with label("verify"):
                hidden = target.forward(inputs, cache, positions[None], mask)
            sync(); t3 = time.perf_counter()
            with label("accept"):
                verdict = accept_path(tree, choose_tokens(target.logits(hidden[0]), settings, None))
                keep = torch.tensor([0] + [n + 1 for n in verdict.path], device=device)
                keep_cache_entries(cache, position, keep)
            sync(); t4 = time.perf_counter()
            with label("draft_commit"):
                state["root_hidden"] = draft.start_round(draft_cache, inputs[0, keep], hidden[0, keep], position,
                                                         verdict.bonus)
            sync(); t5 = time.perf_counter()
            state["position"] = position + int(keep.shape[0])
            state["token"] = verdict.bonus
            return t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4

        for round_index in range(args.rounds + 3):  # 3 warm-up rounds
            durations = run_round()
            if round_index >= 3:
                for name, value in zip(("draft", "tree_mask", "verify", "accept", "draft_commit"), durations):
                    times[name].append(value)
        if args.profile:
            profile_rounds(run_round, args.profile, device)
        token = state["token"]
        # Reference forwards: plain AR decoding (the cache grows one token per step, as in `beagle generate`
        # without a draft; then dropped), under each cuDNN attention setting on CUDA, and a 61-token pass.
        for enabled in ((True, False) if device == "cuda" else (None,)):
            key = "ar_token" if enabled is None else f"ar_token_cudnn_{'on' if enabled else 'off'}"
            times[key] = []
            with cudnn_sdp_backend(enabled):
                length = cache.get_seq_length()
                step_token = token
                for index in range(args.rounds + 3):
                    sync(); t0 = time.perf_counter()
                    hidden = target.forward(torch.tensor([[step_token]], device=device), cache)
                    step_token = int(target.logits(hidden[:, -1]).argmax())
                    sync(); t1 = time.perf_counter()
                    if index >= 3:
                        times[key].append(t1 - t0)
                keep_cache_entries(cache, length, torch.zeros(0, dtype=torch.long, device=device))
        for index in range(args.rounds + 3):
            length = cache.get_seq_length()
            many = torch.randint(0, target.vocab_size, (1, 61), device=device)
            sync(); t2 = time.perf_counter()
            target.forward(many, cache)
            sync(); t3 = time.perf_counter()
            keep_cache_entries(cache, length, torch.zeros(0, dtype=torch.long, device=device))
            if index >= 3:
                times["forward_61_tokens"].append(t3 - t2)

    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    round_total = sum(median[k] for k in ("draft", "tree_mask", "verify", "accept", "draft_commit"))
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "shape": "tiny" if args.tiny else f"{args.shape}, {layers} layers (random weights, bf16)",
        "context_tokens": args.context,
        "tree": tree_settings.__dict__,
        "median_ms": {k: round(v, 3) for k, v in median.items()},
        "round_ms": round(round_total, 3),
        "fraction_of_round": {k: round(median[k] / round_total, 4)
                              for k in ("draft", "tree_mask", "verify", "accept", "draft_commit")},
        "round_over_target_forward_61": round(round_total / median["forward_61_tokens"], 3),
        "round_over_ar_token": round(round_total / min(v for k, v in median.items() if k.startswith("ar_token")), 3),
        "torch": torch.__version__,
        "cudnn_sdp": bool(torch.backends.cuda.cudnn_sdp_enabled()) if device == "cuda" else None,
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
