"""Beagle's own chain acceptance (tree depth K, top-k 1) on the greedy outputs that vLLM produced, for the
side-by-side in docs/vllm.md. Runs in the main environment (no vLLM):

  PYTHONPATH=src python bench/vllm/chain_acceptance.py PROMPTS.jsonl VLLM_RESULTS.jsonl [--depth 4]

For greedy decoding the engine's rounds are determined by the greedy sequence: each round the draft commits
the true target states of the accepted tokens (start_round) and drafts a chain with the engine's own
build_tree (depth K, top-k 1, K tokens); the accepted length is the matching prefix. So one target pass over
prompt + output gives every state the engine would have computed (up to float rounding), and this is
`beagle generate`'s acceptance without the K+1-token verification passes (the slow part on a busy CPU). The
target's argmax along the sequence is checked against the sequence itself (greedy = vLLM's output).
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompts")
    parser.add_argument("vllm_results", help="bench.py acceptance --keep-outputs JSON lines")
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()

    from beagle.decoding.tree import TreeSettings, build_tree
    from beagle.models.checkpoint import load_draft
    from beagle.target_model.model import load_target

    target = load_target("smollm2", dtype="float32", device="cpu")
    prompts = [json.loads(line) for line in open(args.prompts) if line.strip()]
    runs = [json.loads(line) for line in open(args.vllm_results) if line.strip()]
    outputs = runs[0]["outputs"]
    tree_settings = TreeSettings(depth=args.depth, top_k=1, total_tokens=args.depth)
    sequences = []
    for record, output in zip(prompts, outputs):
        ids = target.tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}],
                                                   add_generation_prompt=True, tokenize=True, return_dict=False)
        full = torch.tensor([ids + output])
        with torch.no_grad():
            hidden = target.model.model(full).last_hidden_state[0]
            argmax = target.logits(hidden).argmax(-1)
        agree = (argmax[len(ids) - 1:-1] == full[0, len(ids):]).tolist()
        good = agree.index(False) if False in agree else len(agree)
        sequences.append((ids, output[:good], hidden, len(output)))
    print(json.dumps({"greedy_agrees": sum(len(s[1]) == s[3] for s in sequences), "prompts": len(sequences)}))

    for name in ("smollm2-beagle", "smollm2-eagle2"):
        draft = load_draft(name, target=target, dtype=torch.float32)
        rounds = accepted = 0
        per_position = [0] * args.depth
        for ids, output, hidden, _ in sequences:
            sequence = ids + output
            n = len(ids)
            cache = draft.new_cache(capacity=len(sequence) + 2 * args.depth + 8)
            with torch.no_grad():
                root = draft.start_round(cache, torch.tensor(ids), hidden[:n], 0, sequence[n])
                position = n  # the root token sits here; its state is not known yet
                while position + 1 < len(sequence):
                    depth = min(len(sequence) - 1 - position, args.depth)
                    tree = build_tree(draft, cache, root, tree_settings, max(depth, 1))
                    cache.reset_tree()
                    drafted = tree.tokens[tree.depths.argsort()].tolist()[:depth]  # the chain, root's child first
                    count = 0
                    for offset, token in enumerate(drafted):
                        if token != sequence[position + 1 + offset]:
                            break
                        per_position[offset] += 1
                        count += 1
                    rounds += 1
                    accepted += count
                    keep = list(range(position, position + count + 1))
                    bonus_at = position + count + 1
                    if bonus_at >= len(sequence):
                        break
                    root = draft.start_round(cache, torch.tensor([sequence[i] for i in keep]), hidden[keep], position,
                                             sequence[bonus_at])
                    position = bonus_at
        print(json.dumps({"draft": name, "depth": args.depth, "rounds": rounds, "accepted": accepted,
                          "acceptance_length": round(1 + accepted / rounds, 3), "accepted_per_position": per_position}))


if __name__ == "__main__":
    main()
