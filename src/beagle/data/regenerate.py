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

Generation (:mod:`beagle.data.generation_pool`): one HF ``generate`` call extends ``batch_size``
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
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from beagle.data.conversations import DataReport, load_conversations, resolve_data_path
from beagle.data.generation_pool import Conversation, run_pool
from beagle.data.partial_files import (
    drop_cut_line,
    read_parts,
    write_or_check_manifest,
    write_output,
)
from beagle.errors import BeagleError, DataError
from beagle.files import destination_path, remove_stale
from beagle.ranks import Distributed

logger = logging.getLogger(__name__)

FORMAT = "beagle-regenerated"
VERSION = 1


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
        write_or_check_manifest(parts, _manifest(target, path, settings, len(records)))
        for part in parts.glob("rank-*.jsonl"):
            drop_cut_line(part)
    _barrier(dist, group)
    earlier = read_parts(parts)
    mine = [(index, record) for index, record in records if index % dist.world_size == dist.rank
            and index not in earlier]
    _barrier(dist, group)  # every rank has read the parts before any rank appends to them
    started = time.monotonic()
    _run_shard(target, mine, settings, parts / f"rank-{dist.rank:05d}.jsonl", started, progress and dist.is_main,
               total=sum(1 for index, _ in records if index % dist.world_size == dist.rank))
    report.seconds = time.monotonic() - started
    _barrier(dist, group)
    if dist.is_main:
        entries = read_parts(parts)
        _fill_report(report, entries, [index for index, _ in records], earlier)
        if report.not_started and settings.time_budget is None:
            raise DataError(f"{parts} lacks {report.not_started} conversations after the run; rerun the command")
        write_output(out, (_output_line(entries[index]) for index, _ in records
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

