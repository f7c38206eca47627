"""``beagle demo``: SmolLM2 + the shipped Beagle draft on a few MT-Bench questions, plain vs speculative.

:func:`run_demo` does the work and returns a results dict (testable with any target, draft and
prompts); the CLI (:mod:`beagle.cli.demo`) loads the real models and prints. This module imports
nothing heavy at import time so that ``beagle --help`` stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from beagle.errors import BeagleError

logger = logging.getLogger(__name__)

DEMO_TARGET = "smollm2"
DEMO_DRAFT = "smollm2-beagle"
DEMO_QUESTIONS = 3
DEMO_MAX_NEW_TOKENS = 128
# The demo's draft vocabulary (beagle.vocab): SmolLM2's most frequent ShareGPT assistant tokens, shipped next to
# the drafts; "auto" gives it to a draft without a vocabulary of its own when the target is the demo's.
DEMO_VOCAB = "smollm2-vocab-8192"

MISSING_DRAFT = """\
the shipped Beagle draft for SmolLM2 ({name}) is not in this checkout (expected drafts/{name}/ with \
config.json and model.safetensors).
It is trained on a GPU and committed to the repository; until it is there, train a draft yourself:
  beagle train --target smollm2 --data sharegpt --out my-smollm2-beagle
then run the demo with it:
  beagle demo --draft my-smollm2-beagle"""


def demo_draft_path(name_or_path: str = DEMO_DRAFT) -> str:
    """Folder of the demo's draft: a shipped draft name or a folder. Raises a BeagleError that says
    how to train one when the shipped draft is absent (never falls back to an untrained draft)."""
    from pathlib import Path

    from beagle.assets.shipped import SHIPPED, shipped_draft_path

    if name_or_path in SHIPPED:
        path = shipped_draft_path(name_or_path)
        if path is None:
            raise BeagleError(MISSING_DRAFT.format(name=name_or_path))
        return str(path)
    if not (Path(name_or_path) / "config.json").is_file():
        raise BeagleError(f"--draft {name_or_path!r} is neither a shipped draft name ({', '.join(SHIPPED)}) "
                          "nor a draft checkpoint folder")
    return name_or_path


def demo_vocab(choice: str, draft, target_name: str):
    """The draft vocabulary the demo gives ``draft`` for ``--draft-vocab choice``: "auto" (the draft's own, else
    :data:`DEMO_VOCAB` when the target is the demo's, else none), "none" (the target's full vocabulary), or a
    vocabulary file / shipped name. Returns a DraftVocab or None."""
    from beagle.vocab.core import load_vocab

    if choice == "none":
        return None
    if choice == "auto":
        if draft.vocab is not None:
            return draft.vocab
        if target_name != DEMO_TARGET:
            return None
        choice = DEMO_VOCAB
    return load_vocab(choice)


def mt_bench_prompts(count: int) -> list[dict]:
    """The first turns of the first ``count`` MT-Bench questions: [{"prompt", "category"}, ...]."""
    if count < 1:
        raise BeagleError(f"--questions must be ≥ 1, got {count}")
    try:
        from beagle.assets.datasets import load_mt_bench
    except ImportError as error:  # pragma: no cover - depends on the checkout
        raise BeagleError(f"the MT-Bench loader is not available in this checkout ({error})") from None
    questions = load_mt_bench()
    if count > len(questions):
        raise BeagleError(f"--questions {count}: MT-Bench has {len(questions)} questions")
    return [{"prompt": q["turns"][0], "category": q.get("category", "")} for q in questions[:count]]


def run_demo(
    target,
    draft,
    prompts: list[str],
    *,
    max_new_tokens: int = DEMO_MAX_NEW_TOKENS,
    tree=None,
    concat: bool = True,
    warmup: bool = True,
    on_result: Callable[[int, dict], None] | None = None,
) -> dict:
    """Answer each prompt (as a user turn, chat template) greedily with plain decoding and with the draft.

    tree: a TreeSettings (default: the target device's, :func:`beagle.decoding.tree.default_tree`).
    ``on_result(index, result)`` is called as each question finishes. Returns::

        {"target", "draft", "draft_vocab" (None | {"size", "coverage"}), "tree", "max_new_tokens",
         "questions": [{"prompt", "agree", "plain": {...}, "beagle": {...}, "speedup", "answer"}, ...],
         "overall": {"agree", "agreed", "questions", "plain_tokens_per_s", "beagle_tokens_per_s",
                     "speedup", "tau", "plain_tokens", "beagle_tokens"}}

    ``agree`` is token-for-token identity of the two outputs (greedy decoding is lossless).
    """
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings
    from beagle.decoding.tree import default_tree

    if not prompts:
        raise BeagleError("the demo needs at least one prompt")
    tree = tree or default_tree(target.device)
    plain = SpeculativeGenerator(target)
    beagle = SpeculativeGenerator(target, draft, tree, concat=concat)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    encoded = [target.encode_chat([{"role": "user", "content": prompt}]) for prompt in prompts]
    if warmup:  # first calls pay one-off costs (allocations, kernel selection) that are not decoding speed
        short = GenerationSettings(max_new_tokens=min(8, max_new_tokens), temperature=0.0)
        plain.generate(encoded[0], short)
        beagle.generate(encoded[0], short)

    results = []
    for index, (prompt, prompt_ids) in enumerate(zip(prompts, encoded)):
        base = plain.generate(prompt_ids, settings)
        fast = beagle.generate(prompt_ids, settings)
        result = {
            "prompt": prompt,
            "agree": base.token_ids == fast.token_ids,
            "plain": _timing(base.stats),
            "beagle": {**_timing(fast.stats), "tau": round(fast.stats.tau, 4),
                       "target_passes": fast.stats.target_passes,
                       "acceptance_by_depth": [round(r, 4) for r in fast.stats.acceptance_by_depth()]},
            "speedup": _ratio(fast.stats.tokens_per_s, base.stats.tokens_per_s),
            "answer": fast.text,
        }
        if not result["agree"]:
            logger.warning("question %d: speculative output differs from plain decoding", index + 1)
        results.append(result)
        if on_result is not None:
            on_result(index, result)

    plain_tokens = sum(r["plain"]["tokens"] for r in results)
    beagle_tokens = sum(r["beagle"]["tokens"] for r in results)
    plain_time = sum(r["plain"]["time_s"] for r in results)
    beagle_time = sum(r["beagle"]["time_s"] for r in results)
    passes = sum(r["beagle"]["target_passes"] for r in results)
    plain_speed = plain_tokens / plain_time if plain_time > 0 else 0.0
    beagle_speed = beagle_tokens / beagle_time if beagle_time > 0 else 0.0
    overall = {
        "agree": all(r["agree"] for r in results),
        "agreed": sum(r["agree"] for r in results),
        "questions": len(results),
        "plain_tokens": plain_tokens,
        "beagle_tokens": beagle_tokens,
        "plain_tokens_per_s": round(plain_speed, 3),
        "beagle_tokens_per_s": round(beagle_speed, 3),
        "speedup": _ratio(beagle_speed, plain_speed),
        "tau": round(beagle_tokens / passes, 4) if passes else 0.0,
    }
    vocab = getattr(draft, "vocab", None)
    return {
        "target": str(target.name),
        "draft": getattr(getattr(draft, "config", None), "arch", type(draft).__name__),
        "draft_vocab": None if vocab is None else {"size": vocab.size, "coverage": vocab.coverage},
        "tree": {"depth": tree.depth, "top_k": tree.top_k, "total_tokens": tree.total_tokens},
        "max_new_tokens": max_new_tokens,
        "questions": results,
        "overall": overall,
    }


def _timing(stats) -> dict:
    return {"tokens": stats.new_tokens, "time_s": round(stats.time_total, 5),
            "tokens_per_s": round(stats.tokens_per_s, 3)}


def _ratio(fast: float, slow: float) -> float:
    return round(fast / slow, 3) if slow > 0 else 0.0


def format_question(index: int, total: int, result: dict, category: str = "") -> str:
    prompt = " ".join(result["prompt"].split())
    if len(prompt) > 90:
        prompt = prompt[:87] + "..."
    label = f"{category}: " if category else ""
    plain, beagle = result["plain"], result["beagle"]
    return (f"[{index + 1}/{total}] {label}{prompt}\n"
            f"      plain {plain['tokens_per_s']:.1f} tokens/s · Beagle {beagle['tokens_per_s']:.1f} tokens/s · "
            f"speedup {result['speedup']:.2f}x · τ {beagle['tau']:.2f} · "
            f"identical output: {'yes' if result['agree'] else 'NO'}")


def format_overall(results: dict, example_chars: int = 500) -> str:
    overall = results["overall"]
    lines = [
        f"Overall ({overall['questions']} questions, greedy, ≤ {results['max_new_tokens']} new tokens each):",
        f"  plain decoding  {overall['plain_tokens_per_s']:.1f} tokens/s",
        f"  Beagle          {overall['beagle_tokens_per_s']:.1f} tokens/s  → {overall['speedup']:.2f}x, "
        f"τ {overall['tau']:.2f} tokens per target pass",
        f"  identical output on {overall['agreed']}/{overall['questions']} questions",
    ]
    vocab = results.get("draft_vocab")
    if vocab:
        covered = f", covering {100 * vocab['coverage']:.1f} % of its data's assistant tokens" if vocab.get("coverage") else ""
        lines.insert(3, f"                  (drafting from a {vocab['size']}-token draft vocabulary{covered})")
    example = results["questions"][0]
    answer = example["answer"].strip()
    if len(answer) > example_chars:
        answer = answer[:example_chars].rstrip() + " …"
    lines.append("")
    lines.append(f"Example answer (question 1): {' '.join(example['prompt'].split())[:200]}")
    lines.extend("  " + line for line in answer.splitlines() or [""])
    return "\n".join(lines)
