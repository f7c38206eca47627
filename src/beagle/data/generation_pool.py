"""Batched greedy generation with refilled rows (``beagle regenerate``, ``beagle self-prompts``).

:func:`run_pool` keeps ``settings.rows(device)`` rows generating: one :func:`greedy_extend` call extends every
row by ``refill_every`` greedy tokens; finished rows (EOS or their token budget) hand their answer to their
:class:`Conversation`, whose next prompt (or a new conversation) takes the slot. Waiting prompts are taken
longest first, so a call's rows have similar lengths.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from beagle.data.regenerate import RegenerateSettings


class Conversation:
    """One conversation being regenerated: the turns still to come and the regenerated messages so far."""

    def __init__(self, index: int, record):
        self.index = index
        self.pending: list[dict] = []
        self.built: list[dict] = []
        self.answers = 0
        self.new_tokens = 0
        self.unfinished = 0
        self.ended: str | None = None  # why it stops before its last assistant turn
        if isinstance(record, dict):
            self.ended = "pretokenized"  # token ids only: no text to regenerate
            return
        seen_user = False
        for message in record:  # assistant turns before the first user turn have no prompt
            seen_user = seen_user or message["role"] == "user"
            if seen_user or message["role"] != "assistant":
                self.pending.append(dict(message))
        if seen_user and all(message["role"] != "assistant" for message in self.pending):
            self.pending.append({"role": "assistant", "content": ""})  # a prompt only: it gets one answer

    def next_prompt(self, tokenizer, settings: RegenerateSettings, context: int) -> tuple[list[int], int] | None:
        """(prompt token ids, token budget) of the next assistant turn, or None when the conversation is over."""
        if self.ended is not None:
            return None
        while self.pending and self.pending[0]["role"] != "assistant":
            self.built.append(self.pending.pop(0))
        if not self.pending:
            return None
        if settings.max_turns is not None and self.answers >= settings.max_turns:
            self.ended = "max_turns"
            return None
        try:
            text = tokenizer.apply_chat_template(self.built, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text if isinstance(text, str) else text[0], add_special_tokens=False)["input_ids"]
        except Exception:  # jinja raises TemplateError or anything else (e.g. role order)
            self.ended = "template_error"
            return None
        room = min(settings.max_length or context, context) - len(ids)
        if room < 1:
            self.ended = "max_length"
            return None
        return list(ids), min(settings.max_new_tokens, room)

    def add_answer(self, text: str, count: int, unfinished: bool) -> None:
        """The target's answer to the pending assistant turn (``count`` tokens; ``unfinished``: no EOS)."""
        self.pending.pop(0)
        if not text.strip():
            self.ended = "empty_answer"
            return
        self.built.append({"role": "assistant", "content": text})
        self.answers += 1
        self.new_tokens += count
        self.unfinished += int(unfinished)

    def entry(self) -> dict:
        """The line of the part file: the regenerated messages up to the last answer, or why none is left."""
        messages = list(self.built)
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()
        stats = {"answers": self.answers, "new_tokens": self.new_tokens, "unfinished": self.unfinished,
                 "ended": self.ended}
        if not messages:
            return {"index": self.index, "dropped": self.ended or "no_answer", "stats": stats}
        return {"index": self.index, "messages": messages, "stats": stats}


# --------------------------------------------------------------------------- batched greedy generation


@dataclass
class Row:
    """One answer being generated: prompt ids, token budget, tokens so far; ``done`` once EOS or budget."""

    owner: Conversation
    prompt: list[int]
    budget: int
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    eos: bool = False


@torch.no_grad()
def greedy_extend(target, rows: list[Row], steps: int, eos_ids: set[int], pad_id: int) -> None:
    """Extend each row by up to ``steps`` greedy tokens (fewer at EOS or its budget): one HF ``generate``
    call over the rows' ``prompt + tokens``, left-padded to [len(rows), width] with an attention mask (HF
    derives each row's positions from it, so padding does not move them)."""
    from transformers import GenerationConfig

    sequences = [row.prompt + row.tokens for row in rows]
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for number, sequence in enumerate(sequences):
        input_ids[number, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
        attention[number, width - len(sequence):] = 1
    model = target.model
    saved = model.generation_config
    model.generation_config = GenerationConfig()  # no sampling defaults or penalties stored with the model
    try:
        output = model.generate(input_ids=input_ids.to(target.device), attention_mask=attention.to(target.device),
                                max_new_tokens=steps, do_sample=False, eos_token_id=sorted(eos_ids),
                                pad_token_id=pad_id)
    finally:
        model.generation_config = saved
    for row, new in zip(rows, output[:, width:].tolist()):
        new = new[: row.budget - len(row.tokens)]
        for position, token in enumerate(new):
            if token in eos_ids:
                new, row.eos = new[:position], True
                break
        row.tokens.extend(new)
        row.done = row.eos or len(row.tokens) >= row.budget


def run_pool(
    target,
    conversations: Iterable[Conversation],
    settings: RegenerateSettings,
    finished: Callable[[Conversation], None],
    after_call: Callable[[int], None] = lambda tokens: None,
    deadline: float | None = None,
) -> int:
    """Regenerate ``conversations`` with refilled batches; ``finished(conversation)`` as each completes,
    ``after_call(new tokens)`` after every generate call. After ``deadline`` (``time.monotonic()``) no
    conversation gets its first answer (those under way finish; --max-turns bounds that tail);
    returns how many were left out."""
    tokenizer = target.tokenizer
    eos_ids = target.eos_token_ids()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    context = target.max_length
    rows = settings.rows(target.device)
    waiting: list[tuple[int, int, Row]] = []  # heap: longest prompt first
    order = itertools.count()
    source = iter(conversations)

    def start(conversation: Conversation) -> None:
        prompt = conversation.next_prompt(tokenizer, settings, context)
        if prompt is None:
            finished(conversation)
        else:
            row = Row(conversation, *prompt)
            heapq.heappush(waiting, (-len(row.prompt), next(order), row))

    active: list[Row] = []
    exhausted, stopped, not_started = False, False, 0
    while True:
        if deadline is not None and not stopped and time.monotonic() >= deadline:
            # no new conversation: neither the unread ones nor those still waiting for their first answer
            unstarted = sum(1 for entry in waiting if entry[2].owner.answers == 0)
            waiting[:] = [entry for entry in waiting if entry[2].owner.answers > 0]
            heapq.heapify(waiting)
            not_started, exhausted, stopped = sum(1 for _ in source) + unstarted, True, True
        if not exhausted and len(waiting) < rows:
            batch = list(itertools.islice(source, rows))
            exhausted = len(batch) < rows
            for conversation in batch:
                start(conversation)
        while len(active) < rows and waiting:
            active.append(heapq.heappop(waiting)[2])
        if not active:
            if exhausted:
                return not_started
            continue
        before = sum(len(row.tokens) for row in active)
        steps = min(settings.refill_every, max(row.budget - len(row.tokens) for row in active))
        greedy_extend(target, active, steps, eos_ids, pad_id)
        generated = sum(len(row.tokens) for row in active) - before
        still = []
        for row in active:
            if not row.done:
                still.append(row)
                continue
            text = tokenizer.decode(row.tokens, skip_special_tokens=False)
            row.owner.add_answer(text, len(row.tokens), unfinished=not row.eos)
            start(row.owner)
        active = still
        after_call(generated)
