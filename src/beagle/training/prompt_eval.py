"""Evaluation on a benchmark's own distribution: ``beagle train --eval-prompts mt-bench``.

The held-out split measures a draft on the training data's distribution (for the shipped drafts: long greedy
answers to ShareGPT prompts), which is not what a user decodes. Here the target answers a prompt set once,
greedily (its first user turn, ``new_tokens`` per answer, batched like ``beagle regenerate``), and each
evaluation runs the simulated acceptance on those conversations: the tokens the draft would face when a user
decodes those prompts at T=0. ``top_k`` > 1 counts a draft position as accepted when the target's token is
among the draft's top-k there (a tree's view of the same chain); ``docs/results/acceptance-gap-cpu`` measures
how each predicts the measured τ.
"""

from __future__ import annotations

import logging

from beagle.data.batches import ChatDataset
from beagle.data.conversations import DataReport, encode_conversations
from beagle.errors import DataError

logger = logging.getLogger(__name__)


def benchmark_answers(target, source: str, count: int, new_tokens: int, batch_size: int | None = None,
                      max_length: int = 2048) -> ChatDataset:
    """The target's greedy answers to the first turn of ``count`` prompts of ``source`` (``mt-bench``,
    ``humaneval``, ``sharegpt-heldout`` or a prompt file, see :func:`beagle.data.prompt_sets.load_prompts`),
    as tokenized conversations (prompt + answer, the answer's tokens trained)."""
    from beagle.data.prompt_sets import load_prompts
    from beagle.data.generation_pool import Conversation, run_pool
    from beagle.data.regenerate import RegenerateSettings

    prompts = [prompt for prompt in load_prompts(source, limit=count) if prompt.chat]
    conversations = [Conversation(index, [*prompt.context, {"role": "user", "content": prompt.turns[0]}])
                     for index, prompt in enumerate(prompts)]
    settings = RegenerateSettings(max_new_tokens=new_tokens, max_length=max_length, max_turns=1,
                                  batch_size=batch_size).validate()
    finished: list[Conversation] = []
    run_pool(target, conversations, settings, finished.append)
    records = [(conversation.index, conversation.built) for conversation in sorted(finished, key=lambda c: c.index)
               if conversation.answers]
    report = DataReport(total=len(prompts))
    examples = encode_conversations(records, target.tokenizer, max_length, report)
    if not examples:
        raise DataError(f"--eval-prompts {source}: the target answered none of its {len(prompts)} chat prompts")
    logger.info("--eval-prompts %s: %d greedy answers of <= %d tokens (%d tokens in all)", source, len(examples),
                new_tokens, report.tokens)
    return ChatDataset(examples, report)
