"""Why the training metric (τ_sim) and the measured τ disagree: one draft, several distributions, one run.

For each draft and each prompt set, at T=0 (fp32 by default, so the answers are the target's own greedy ones):

- ``measured``: real speculative decoding with ``--tree`` (τ and acceptance by depth, as ``beagle bench``);
- ``chain``: real decoding with a chain (top-k 1, one token per level, ``--depth`` levels), with ``--chain``;
- ``sim@answers``: τ_sim (the trainer's simulated greedy chain, :mod:`beagle.training.evaluation`) on the
  prompts with the answers just generated, i.e. on the benchmark's own distribution;
- ``sim@human`` (ShareGPT held-out only): τ_sim teacher-forced on ShareGPT's own (human / ChatGPT) answers;
- ``sim@regenerated``: τ_sim on the training run's held-out split (``--regenerated``, the first
  ``--regenerated-count`` rows: what the shipped configs record), whole and cut to ``--max-new-tokens``.

If ``sim@answers`` equals ``chain`` the metric is defined right and only the data it runs on differs.

    python bench/acceptance_gap.py --sets mt-bench,sharegpt-heldout --limit 40 --chain \\
        --out docs/results/acceptance-gap-cpu/gap.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from beagle import GenerationSettings, SpeculativeGenerator, TreeSettings, load_draft, load_target
from beagle.data.prompt_sets import load_prompts, prompt_ids
from beagle.data.batches import ChatDataset
from beagle.data.conversations import Example
from beagle.decoding.stats import DecodeStats
from beagle.training.evaluation import simulated_tau, state_batches, summed_acceptance

logger = logging.getLogger("acceptance_gap")


def generate_set(generator, target, prompts, tokens: int):
    """(the prompts with their greedy answers as Examples, the answers' token ids, the merged statistics)."""
    settings = GenerationSettings(max_new_tokens=tokens)
    examples, answers = [], []
    merged = DecodeStats()
    for prompt in prompts:
        ids = prompt_ids(target, prompt, 0)
        out = generator.generate(ids, settings)
        examples.append(Example(np.array(ids + out.token_ids, dtype=np.int32),
                                np.array([0] * len(ids) + [1] * len(out.token_ids), dtype=bool)))
        answers.append(out.token_ids)
        merged.new_tokens += out.stats.new_tokens
        merged.target_passes += out.stats.target_passes
        merged.accept_lengths += out.stats.accept_lengths
        merged.tree_depths += out.stats.tree_depths
    rounds = merged.accept_lengths
    # tau counts the prefill pass like `beagle bench` (new tokens / target passes); tau_rounds = 1 + mean accepted
    return examples, answers, {"tau": round(merged.tau, 4),
                               "tau_rounds": round(1 + float(np.mean(rounds)), 4) if rounds else 1.0,
                               "acceptance_by_depth": [round(r, 4) for r in merged.acceptance_by_depth()],
                               "new_tokens": merged.new_tokens, "prompts": len(prompts)}


TOP_KS = (1, 2, 4, 10)  # τ_sim's view: top-1 (a chain), or the target's token among the draft's top-k


def batches_with_states(target, dataset, batch_size: int) -> list:
    """The dataset's micro-batches with the target's states, made once (every draft and top-k reuses them)."""
    return list(state_batches(target, dataset, list(range(len(dataset))), batch_size, "cpu"))


def sim(draft, batches: list, depth: int) -> dict:
    """τ_sim by top-k: {"top1": {"tau", "acceptance", "counted"}, "top2": ...}."""
    result = {}
    for top_k in TOP_KS:
        accepted, counted = summed_acceptance(draft, batches, depth, top_k)
        rates, tau = simulated_tau(accepted, counted)
        result[f"top{top_k}"] = {"tau": round(tau, 4), "acceptance": [round(r, 4) for r in rates],
                                 "counted": counted.tolist()}
    return result


def human_answers(prompts, tokenizer, max_length: int) -> ChatDataset:
    """ShareGPT held-out prompts with the dataset's own first answer (teacher forcing on non-target text)."""
    from beagle.assets.datasets import load_sharegpt
    from beagle.data.conversations import DataReport, encode_conversations

    wanted = {prompt.id for prompt in prompts}
    records = []
    for record in load_sharegpt(split="heldout"):
        if str(record.get("id")) not in wanted:
            continue
        turns = [t for t in record.get("conversations", []) if t.get("from") in ("human", "gpt")]
        if len(turns) >= 2 and turns[0]["from"] == "human" and turns[1]["from"] == "gpt":
            records.append((len(records), [{"role": "user", "content": turns[0]["value"]},
                                           {"role": "assistant", "content": turns[1]["value"]}]))
    return ChatDataset(encode_conversations(records, tokenizer, max_length, DataReport()))


def cut_answers(dataset: ChatDataset, tokens: int) -> ChatDataset:
    """Each conversation cut after its first ``tokens`` assistant tokens (the benchmark's answer length)."""
    examples = []
    for example in dataset.examples:
        positions = np.flatnonzero(example.loss_mask)
        if len(positions) == 0:
            continue
        end = positions[min(tokens, len(positions)) - 1] + 1
        examples.append(Example(example.input_ids[:end], example.loss_mask[:end]))
    return ChatDataset(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drafts", default="smollm2-beagle,smollm2-eagle2")
    parser.add_argument("--sets", default="mt-bench,sharegpt-heldout")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--tree", default="5,10,60", help="depth,top_k,total_tokens")
    parser.add_argument("--depth", type=int, default=5, help="τ_sim / chain depth")
    parser.add_argument("--chain", action="store_true", help="also decode with a chain of --depth")
    parser.add_argument("--regenerated", default="docs/results/regenerate-h200/regenerated.jsonl.gz")
    parser.add_argument("--regenerated-count", type=int, default=256)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    torch.manual_seed(0)
    target = load_target("smollm2", dtype=args.dtype, device="cpu")
    depth, top_k, total = (int(v) for v in args.tree.split(","))
    tree = TreeSettings(depth=depth, top_k=top_k, total_tokens=total)
    chain = TreeSettings(depth=args.depth, top_k=1, total_tokens=args.depth)
    sets = {name: load_prompts(name, limit=args.limit) for name in args.sets.split(",")}
    result = {"command": "python bench/acceptance_gap.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and not isinstance(v, bool))
        + (" --chain" if args.chain else ""),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "dtype": args.dtype, "tree": vars(tree), "depth": args.depth, "drafts": {}}
    regenerated = None
    if args.regenerated and Path(args.regenerated).exists():
        full = ChatDataset.from_file(args.regenerated, target.tokenizer, 2048)
        kept = ChatDataset(full.examples[: args.regenerated_count])
        regenerated = (batches_with_states(target, kept, args.batch_size),
                       batches_with_states(target, cut_answers(kept, args.max_new_tokens), args.batch_size))
    human = {}
    answers_of = {}
    for draft_name in args.drafts.split(","):
        draft = load_draft(draft_name, target, dtype=torch.float32).eval()
        entry = result["drafts"][draft_name] = {}
        if regenerated is not None:
            entry["sim@regenerated"] = sim(draft, regenerated[0], args.depth)
            entry[f"sim@regenerated-cut{args.max_new_tokens}"] = sim(draft, regenerated[1], args.depth)
            logger.info("%s regenerated: %s", draft_name, json.dumps({key: value for key, value in entry.items()}))
        for set_name, prompts in sets.items():
            row = entry[set_name] = {}
            started = time.perf_counter()
            generator = SpeculativeGenerator(target, draft, tree=tree, adaptive=False)
            examples, tokens, row["measured"] = generate_set(generator, target, prompts, args.max_new_tokens)
            if args.chain:
                generator = SpeculativeGenerator(target, draft, tree=chain, adaptive=False)
                _, chain_tokens, row["chain"] = generate_set(generator, target, prompts, args.max_new_tokens)
                row["chain_equals_tree_output"] = chain_tokens == tokens
            previous = answers_of.setdefault(set_name, tokens)
            row["answers_equal_other_drafts"] = previous == tokens
            row["sim@answers"] = sim(draft, batches_with_states(target, ChatDataset(examples), args.batch_size), args.depth)
            if set_name == "sharegpt-heldout":
                if set_name not in human:
                    human[set_name] = batches_with_states(target, human_answers(prompts, target.tokenizer, 2048),
                                                    args.batch_size)
                row["sim@human"] = sim(draft, human[set_name], args.depth)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            logger.info("%s %s: %s", draft_name, set_name, json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
