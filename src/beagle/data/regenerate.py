"""Target-regenerated conversations: every assistant turn replaced by the target's own greedy answer.

    u1 a1 u2 a2 ...  ->  u1 A1 u2 A2 ...     A_m = greedy(target, render(u1 A1 ... u_m) + generation prompt)

A draft proposes continuations of the *target's* text, so it learns best from that text. ``beagle
regenerate`` writes the result once as JSONL (``{"index", "messages"}``, OpenAI-style messages, read by
``beagle train --data`` and ``beagle datagen``); ``beagle train --regenerate`` runs the same code into a cache.

Per conversation: assistant turns before the first user turn are dropped; a conversation without an
assistant turn (a prompt, e.g. of ``beagle self-prompts``) gets one answer after its messages; a turn is regenerated while its
prompt is shorter than ``max_length`` tokens (the training length: what lies beyond is truncated away
anyway) and its answer gets at most ``min(max_new_tokens, max_length - prompt)`` tokens; ``max_turns``
keeps the first N answers. The conversation ends before a turn that cannot start (and after an empty
answer); one with no answer left is dropped. Pre-tokenized records have no text to regenerate: dropped.

Generation (:func:`greedy_extend`, :func:`run_pool`): one HF ``generate`` call extends ``batch_size``
left-padded rows by ``refill_every`` greedy tokens; then finished rows (EOS or their token budget) leave,
the conversation's next prompt or a new conversation takes the slot, and the other rows continue from
prompt + tokens so far (a greedy continuation is the same whether split or not). Waiting prompts are
taken longest first (similar lengths, less padding). Without the refills a batch would run until its
longest answer while the rows that finished early idle.

Files: each finished conversation is one JSON line appended to ``OUT.partial/rank-RRRRR.jsonl``
(flushed and fsynced after every generate call; a line cut by a kill is dropped by the next run);
``OUT.partial/manifest.json`` says what is being made (target, data digest, settings), so that rerunning
the same command continues and a different one is refused. When all conversations are done, rank 0 writes
OUT (input order; ``.gz`` compresses) through a temporary file and a rename and removes the folder: OUT
exists only complete. Under ``torchrun`` rank r of w takes the records whose index i has i % w == r.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import heapq
import itertools
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from beagle.data.conversations import DataReport, load_conversations, resolve_data_path
from beagle.errors import BeagleError, DataError
from beagle.files import atomic_file, destination_path, remove_stale
from beagle.ranks import Distributed

logger = logging.getLogger(__name__)

FORMAT = "beagle-regenerated"
VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class RegenerateSettings:
    """What is regenerated (``key``: the settings that change the output) and how fast."""

    max_new_tokens: int = 1024  # per assistant turn
    max_length: int | None = 2048  # tokens: no turn starts at or beyond it, no answer runs past it
    max_turns: int | None = None  # regenerate the first N assistant turns of each conversation
    limit: int | None = None  # the first N usable conversations of the file
    batch_size: int | None = None  # rows per generate call (None: 256 on CUDA, 8 on CPU)
    refill_every: int = 64  # new tokens per generate call (rows are refilled in between)
    time_budget: float | None = None  # seconds: no new conversation is started after that

    def validate(self) -> "RegenerateSettings":
        for name in ("max_new_tokens", "max_length", "max_turns", "limit", "batch_size", "refill_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BeagleError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.time_budget is not None and self.time_budget <= 0:
            raise BeagleError(f"--time-budget must be positive (got {self.time_budget})")
        return self

    def rows(self, device: torch.device) -> int:
        return self.batch_size or (256 if device.type == "cuda" else 8)

    def key(self) -> dict:
        return {name: getattr(self, name) for name in ("max_new_tokens", "max_length", "max_turns", "limit")}


@dataclass
class RegenerateReport:
    """What a regeneration did: records read, conversations written / dropped and why, tokens and speed."""

    source: DataReport = field(default_factory=DataReport)  # records read; malformed ones skipped by reason
    conversations: int = 0  # usable conversations (after --limit)
    written: int = 0
    dropped: Counter = field(default_factory=Counter)  # no answer left, by reason
    not_started: int = 0  # left out by --time-budget
    answers: int = 0
    unfinished_answers: int = 0  # stopped by the token budget, not by EOS
    ended_early: Counter = field(default_factory=Counter)  # conversations cut before a later turn, by reason
    new_tokens: int = 0  # all answers' tokens (earlier runs included)
    tokens_this_run: int = 0
    seconds: float = 0.0  # this run's generation time
    resumed: int = 0  # conversations finished by an earlier run
    existed: bool = False  # the output was already complete: nothing was done

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_this_run / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.existed:
            return "the output already exists (complete): nothing to do"

        def counts(counter: Counter) -> str:
            return ", ".join(f"{reason}: {count}" for reason, count in sorted(counter.items())) or "none"

        malformed = self.source.num_skipped
        lines = [
            f"{self.source.total} records read: {self.written} conversations written ({self.answers} answers, "
            f"{self.unfinished_answers} stopped by the token limit), {malformed} malformed skipped "
            f"({counts(self.source.skipped)}), {sum(self.dropped.values())} dropped ({counts(self.dropped)})"
            + (f", {self.not_started} not started (--time-budget)" if self.not_started else ""),
            f"conversations ended before their last assistant turn: {counts(self.ended_early)}",
            f"{self.new_tokens:,} new tokens in all; this run {self.tokens_this_run:,} in {self.seconds:.1f} s "
            f"({self.tokens_per_s:,.0f} tokens/s)" + (f", {self.resumed} conversations from an earlier run"
                                                      if self.resumed else ""),
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(source=self.source.to_dict(), dropped=dict(self.dropped), ended_early=dict(self.ended_early),
                    tokens_per_s=self.tokens_per_s)
        return data


# --------------------------------------------------------------------------- one conversation


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


# --------------------------------------------------------------------------- the file


def regenerate_file(
    target,
    data: str | os.PathLike,
    out: str | os.PathLike,
    settings: RegenerateSettings | None = None,
    dist: Distributed | None = None,
    progress: bool = False,
) -> RegenerateReport:
    """Regenerate every conversation of ``data`` (a file or named data asset) into ``out`` (JSONL, ``.gz``
    compressed), resumably and atomically (see the module docstring); all ranks call it under torchrun.
    Returns the report (complete on rank 0)."""
    settings = (settings or RegenerateSettings()).validate()
    dist = dist or Distributed()
    out = Path(out)
    report = RegenerateReport()
    if out.exists():
        report.existed = True
        logger.info("%s exists: nothing to regenerate", out)
        return report
    if target.tokenizer is None or not getattr(target.tokenizer, "chat_template", None):
        raise DataError(f"regenerating answers needs the target's tokenizer with a chat template ({target.name!r} "
                        "has none)")
    path = resolve_data_path(data)
    records = load_conversations(path, report.source, require_answer=False)
    if settings.limit is not None:
        records = records[: settings.limit]
    report.conversations = len(records)
    out = destination_path(out)
    parts = destination_path(out.with_name(out.name + ".partial"), "the resume folder")
    if parts.exists() and not parts.is_dir():
        raise BeagleError(f"{parts} (where an interrupted run of this command is kept) is a file; move it away")
    group = _barrier_group(dist)
    if dist.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out.parent, (f".{glob.escape(out.name)}.{'[a-z0-9_]' * 8}.tmp",))  # earlier versions' temporaries
        parts.mkdir(exist_ok=True)
        _write_or_check_manifest(parts, _manifest(target, path, settings, len(records)))
        for part in parts.glob("rank-*.jsonl"):
            _drop_cut_line(part)
    _barrier(dist, group)
    earlier = _read_parts(parts)
    mine = [(index, record) for index, record in records if index % dist.world_size == dist.rank
            and index not in earlier]
    _barrier(dist, group)  # every rank has read the parts before any rank appends to them
    started = time.monotonic()
    _run_shard(target, mine, settings, parts / f"rank-{dist.rank:05d}.jsonl", started, progress and dist.is_main,
               total=sum(1 for index, _ in records if index % dist.world_size == dist.rank))
    report.seconds = time.monotonic() - started
    _barrier(dist, group)
    if dist.is_main:
        entries = _read_parts(parts)
        _fill_report(report, entries, [index for index, _ in records], earlier)
        if report.not_started and settings.time_budget is None:
            raise DataError(f"{parts} lacks {report.not_started} conversations after the run; rerun the command")
        _write_output(out, (_output_line(entries[index]) for index, _ in records
                            if "messages" in entries.get(index, {})))
        shutil.rmtree(parts)
        logger.info("regenerated %s:\n%s", out, report.summary())
    _barrier(dist, group)
    return report


def _run_shard(target, records, settings: RegenerateSettings, part: Path, started: float, progress: bool,
               total: int) -> None:
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(records), desc="regenerating", unit="conv", dynamic_ncols=True)
    tokens = 0
    deadline = None if settings.time_budget is None else started + settings.time_budget
    with part.open("a", encoding="utf-8") as sink:

        def finished(conversation: Conversation) -> None:
            sink.write(json.dumps(conversation.entry(), ensure_ascii=False) + "\n")
            if bar is not None:
                bar.update(1)

        def after_call(generated: int) -> None:
            nonlocal tokens
            sink.flush()
            os.fsync(sink.fileno())  # a kill loses at most the conversations of one generate call
            tokens += generated
            if bar is not None:
                bar.set_postfix(tok_s=f"{tokens / max(time.monotonic() - started, 1e-9):.0f}", refresh=False)

        conversations = (Conversation(index, record) for index, record in records)
        not_started = run_pool(target, conversations, settings, finished, after_call, deadline)
    if bar is not None:
        bar.close()
    if not_started:
        logger.info("--time-budget: %d conversations not started", not_started)


def _fill_report(report: RegenerateReport, entries: dict[int, dict], indices: list[int], earlier) -> None:
    for index in indices:
        entry = entries.get(index)
        if entry is None:
            report.not_started += 1
            continue
        stats = entry.get("stats", {})
        if "messages" in entry:
            report.written += 1
        else:
            report.dropped[entry["dropped"]] += 1
        if stats.get("ended") and "messages" in entry:
            report.ended_early[stats["ended"]] += 1
        report.answers += stats.get("answers", 0)
        report.unfinished_answers += stats.get("unfinished", 0)
        report.new_tokens += stats.get("new_tokens", 0)
        if index in earlier:
            report.resumed += 1
        else:
            report.tokens_this_run += stats.get("new_tokens", 0)


def _output_line(entry: dict) -> dict:
    return {"index": entry["index"], "messages": entry["messages"]}


def _manifest(target, path: Path, settings: RegenerateSettings, count: int) -> dict:
    return {"format": FORMAT, "version": VERSION, "key": regeneration_key(target, path, settings), "records": count}


def regeneration_key(target, path: Path, settings: RegenerateSettings) -> dict:
    """Everything the regenerated text depends on: the target (shapes, name, dtype), the data file's
    content, the chat template and the settings that change the output."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    template = str(getattr(target.tokenizer, "chat_template", ""))
    return {"target": target.fingerprint(), "dtype": str(target.dtype).replace("torch.", ""),
            "data": digest.hexdigest(), "chat_template": hashlib.sha256(template.encode()).hexdigest(),
            "settings": settings.key()}


def cached_regeneration(target, data: str | os.PathLike, settings: RegenerateSettings,
                        cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``beagle train --regenerate`` keeps the regenerated file of (target, data, settings)."""
    from beagle.assets.pypi import cache_root

    key = regeneration_key(target, resolve_data_path(data), settings)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root(cache_dir) / "regenerated" / f"regenerated-{name}.jsonl"


def _write_or_check_manifest(parts: Path, manifest: dict) -> None:
    path = parts / MANIFEST
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
        if existing.get("key") != manifest["key"] or existing.get("records") != manifest["records"]:
            old, new = existing.get("key", {}), manifest["key"]
            different = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["records"]
            raise DataError(f"{parts} holds a regeneration of other inputs (differs in {', '.join(different)}); "
                            "rerun the command that made it, or delete the folder")
        return
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _read_parts(parts: Path) -> dict[int, dict]:
    """Finished conversations of all part files: index -> entry (a cut last line is ignored)."""
    entries: dict[int, dict] = {}
    for part in sorted(parts.glob("rank-*.jsonl")):
        with part.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # cut by a kill (or still being written by another rank)
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                entries.setdefault(int(entry["index"]), entry)
    return entries


def _drop_cut_line(path: Path) -> None:
    """Truncate a part file after its last complete line (a kill can leave a cut one)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def _write_output(out: Path, lines: Iterator[dict]) -> None:
    """JSONL (gzip when ``out`` ends in .gz) through a temporary file renamed into place."""
    with atomic_file(out) as temporary:
        opener = gzip.open if out.suffix == ".gz" else open
        with opener(temporary, "wt", encoding="utf-8") as sink:
            for line in lines:
                sink.write(json.dumps(line, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- ranks


def _barrier_group(dist: Distributed):
    """A gloo group for the barriers: ranks wait for the slowest shard, longer than NCCL's default timeout."""
    if not dist.enabled:
        return None
    from datetime import timedelta

    return torch.distributed.new_group(backend="gloo", timeout=timedelta(days=7))


def _barrier(dist: Distributed, group) -> None:
    if dist.enabled:
        torch.distributed.barrier(group=group)

