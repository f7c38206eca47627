"""Scale check: the cost of one speculative round on an 8B-shaped target, split by phase.

Random weights (Llama-3.1-8B shape; vocab 128256), bf16, batch 1, a random Beagle draft.
Phases of one round, each timed with CUDA synchronisation (median over rounds):
  draft        build_tree: draft forwards + top-k + rerank (depth 5 / top-k 10 / 60 tokens)
  tree_mask    ancestry matrix + additive verification mask
  verify       the target forward over root + 60 tree tokens
  accept       target choices + acceptance walk + KV-cache compaction
  draft_commit draft.start_round (K/V of accepted true states + next root)
and, for reference, one plain target forward of 1 token (an AR step) and of 61 tokens.

    PYTHONPATH=src python bench/gpu/round_cost.py --out $OUT/round_cost.json          # GPU
    PYTHONPATH=src python bench/gpu/round_cost.py --tiny --out /tmp/round_cost.json    # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(tiny: bool, device: str):
    from beagle.models.checkpoint import build_draft
    from random_models import random_target

    dtype = torch.float32 if tiny else torch.bfloat16
    target = random_target("tiny" if tiny else "llama-3.1-8b", 2 if tiny else 32, device, dtype)
    draft = build_draft(target, "beagle").to(dtype)
    return target, draft


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    from beagle.decoding.sampling import GenerationSettings, choose_tokens
    from beagle.decoding.tree import TreeSettings, build_tree
    from beagle.decoding.verify import accept_path
    from beagle.target.cache import keep_cache_entries, tree_attention_mask

    target, draft = build(args.tiny, device)
    settings = GenerationSettings(max_new_tokens=1)
    tree_settings = TreeSettings(5, 10, 60)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {k: [] for k in ("draft", "tree_mask", "verify", "accept", "draft_commit",
                                                      "ar_step_1_token", "forward_61_tokens")}
    with torch.no_grad():
        prompt = torch.randint(0, target.vocab_size, (1, args.context), device=device)
        cache = target.new_cache()
        hidden = target.forward(prompt, cache)
        token = int(target.logits(hidden[:, -1]).argmax())
        draft_cache = draft.new_cache(capacity=args.context + 64 * (args.rounds + 4))
        root_hidden = draft.start_round(draft_cache, prompt[0], hidden[0], 0, token)
        position = args.context
        for round_index in range(args.rounds + 3):  # 3 warm-up rounds
            record = round_index >= 3
            sync(); t0 = time.perf_counter()
            tree = build_tree(draft, draft_cache, root_hidden, tree_settings)
            draft_cache.reset_tree()
            sync(); t1 = time.perf_counter()
            inputs = torch.cat([torch.tensor([token], device=device), tree.tokens])[None]
            positions = position + torch.cat([torch.zeros(1, dtype=torch.long, device=device), tree.depths])
            mask = tree_attention_mask(position, tree.ancestry(), target.dtype)
            sync(); t2 = time.perf_counter()
            hidden = target.forward(inputs, cache, positions[None], mask)
            sync(); t3 = time.perf_counter()
            verdict = accept_path(tree, choose_tokens(target.logits(hidden[0]), settings, None))
            keep = torch.tensor([0] + [n + 1 for n in verdict.path], device=device)
            keep_cache_entries(cache, position, keep)
            sync(); t4 = time.perf_counter()
            root_hidden = draft.start_round(draft_cache, inputs[0, keep], hidden[0, keep], position, verdict.bonus)
            sync(); t5 = time.perf_counter()
            position += int(keep.shape[0])
            token = verdict.bonus
            if record:
                for name, value in zip(("draft", "tree_mask", "verify", "accept", "draft_commit"),
                                       (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    times[name].append(value)
        # Reference forwards on a copy-free path: a 1-token AR step and a 61-token pass (then dropped).
        for index in range(args.rounds + 3):
            length = cache.get_seq_length()
            sync(); t0 = time.perf_counter()
            target.forward(torch.tensor([[token]], device=device), cache)
            sync(); t1 = time.perf_counter()
            keep_cache_entries(cache, length, torch.zeros(0, dtype=torch.long, device=device))
            many = torch.randint(0, target.vocab_size, (1, 61), device=device)
            sync(); t2 = time.perf_counter()
            target.forward(many, cache)
            sync(); t3 = time.perf_counter()
            keep_cache_entries(cache, length, torch.zeros(0, dtype=torch.long, device=device))
            if index >= 3:
                times["ar_step_1_token"].append(t1 - t0)
                times["forward_61_tokens"].append(t3 - t2)

    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    round_total = sum(median[k] for k in ("draft", "tree_mask", "verify", "accept", "draft_commit"))
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "shape": "tiny" if args.tiny else "llama-3.1-8b (random weights, bf16)",
        "context_tokens": args.context,
        "tree": tree_settings.__dict__,
        "median_ms": {k: round(v, 3) for k, v in median.items()},
        "round_ms": round(round_total, 3),
        "fraction_of_round": {k: round(median[k] / round_total, 4)
                              for k in ("draft", "tree_mask", "verify", "accept", "draft_commit")},
        "round_over_target_forward_61": round(round_total / median["forward_61_tokens"], 3),
        "round_over_ar_step": round(round_total / median["ar_step_1_token"], 3),
        "torch": torch.__version__,
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
