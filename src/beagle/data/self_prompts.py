"""Self-generated prompts (Magpie-style): the target writes the user turns, so no dataset is needed.

    prefix = render([system?, user: SENTINEL])[: position of SENTINEL]     e.g. "<|im_start|>user\\n" after the
    user text ~ sample(target, prefix)  until the template's end of turn   template's (default) system turn

An instruction-tuned target that is shown the start of a user turn continues it with the kind of request it
was tuned on. ``beagle self-prompts`` samples ``batch_size`` rows per HF ``generate`` call (all rows share the
prefix: no padding), keeps the texts that pass :mod:`beagle.data.prompt_filters` (clean, not near-duplicates)
until ``count`` are kept or ``max_samples`` were drawn, and writes JSONL of one-user-message conversations
(``{"index", "messages": [{"role": "user", ...}], "source"}``, a system message first when ``system`` is given)
that ``beagle regenerate`` answers. A sample that does not reach the end of its turn within
``max_prompt_tokens`` is dropped (``unfinished``).

Reproducible: generate call b draws from ``torch.manual_seed(hash(seed, b))`` (inside ``fork_rng``, so the
caller's random state is untouched), hence the same command gives the same file. ``mix`` adds conversations of
other datasets (``[(path, fraction)]``: ``round(fraction * count)`` of them, drawn in a seeded order, the
duplicates of each other's first user message dropped); self-prompts that duplicate those are dropped too, and
the output holds both, shuffled with the seed.

Files: the samples of each generate call are appended to ``OUT.partial/samples.jsonl`` (flushed and fsynced;
``OUT.partial/manifest.json`` holds what they depend on), so an interrupted run continues where it stopped
when rerun with the same target and sampling settings (the count, filters and mix may change). OUT is written
through a temporary file and a rename, then the folder is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from beagle.data.conversations import DataReport, load_conversations, resolve_data_path
from beagle.data.partial_files import (
    drop_cut_line,
    write_or_check_manifest,
    write_output,
)
from beagle.data.prompt_filters import PromptFilter, PromptSelector
from beagle.errors import BeagleError, DataError

logger = logging.getLogger(__name__)

FORMAT = "beagle-self-prompts"
VERSION = 1
SENTINEL = "\u2063BEAGLE-USER-TURN\u2063"  # invisible separators: no template rewrites them
SAMPLES = "samples.jsonl"


@dataclass
class SelfPromptSettings:
    """How prompts are sampled (``key``: what the samples depend on) and how many are wanted."""

    count: int = 1000  # prompts in the output (self-generated and mixed)
    temperature: float = 1.0
    top_p: float = 0.95
    max_prompt_tokens: int = 128  # a sample without the end of its turn within this many tokens is dropped
    batch_size: int | None = None  # rows per generate call (None: 256 on CUDA, 16 on CPU)
    seed: int = 0
    system: str | None = None  # system message of the prefix (None: the template's default, if any)
    max_samples: int | None = None  # samples drawn at most (None: 4 x the self-generated count)
    mix: list[tuple[str, float]] = field(default_factory=list)  # (data file or asset, fraction of count)

    def validate(self) -> "SelfPromptSettings":
        for name in ("count", "max_prompt_tokens", "batch_size", "max_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BeagleError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if not self.temperature > 0:
            raise BeagleError(f"--temperature must be positive (got {self.temperature}): greedy sampling would "
                              "write the same prompt every time")
        if not 0 < self.top_p <= 1:
            raise BeagleError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if any(not 0 < fraction < 1 for _, fraction in self.mix) or sum(f for _, f in self.mix) >= 1:
            raise BeagleError("--mix fractions must be in (0, 1) and sum to less than 1 "
                              f"(got {', '.join(str(f) for _, f in self.mix)})")
        return self

    def rows(self, device: torch.device) -> int:
        return self.batch_size or (256 if device.type == "cuda" else 16)

    def mixed_counts(self) -> list[int]:
        return [round(fraction * self.count) for _, fraction in self.mix]

    def key(self, rows: int) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_prompt_tokens": self.max_prompt_tokens,
                "rows": rows, "seed": self.seed, "system": self.system}


@dataclass
class SelfPromptReport:
    """What a run did: samples drawn, prompts kept, dropped by reason, mixed-in conversations, speed."""

    samples: int = 0  # drawn in all (earlier runs included)
    kept: int = 0  # self-generated prompts in the output
    wanted: int = 0  # self-generated prompts asked for
    dropped: Counter = field(default_factory=Counter)
    mixed: dict = field(default_factory=dict)  # source -> conversations taken
    mixed_wanted: dict = field(default_factory=dict)
    samples_this_run: int = 0
    tokens_this_run: int = 0
    seconds: float = 0.0  # this run's generation time
    resumed_samples: int = 0  # drawn by an earlier run
    existed: bool = False

    @property
    def samples_per_s(self) -> float:
        return self.samples_this_run / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.existed:
            return "the output already exists: nothing to do"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.dropped.items())) or "none"
        lines = [f"{self.samples} samples drawn: {self.kept} prompts kept (of {self.wanted} wanted), "
                 f"{sum(self.dropped.values())} dropped ({reasons})",
                 f"this run: {self.samples_this_run} samples, {self.tokens_this_run:,} tokens in {self.seconds:.1f} s "
                 f"({self.samples_per_s:.2f} samples/s)"
                 + (f"; {self.resumed_samples} samples from an earlier run" if self.resumed_samples else "")]
        for source, taken in self.mixed.items():
            lines.append(f"mixed in: {taken} conversations of {source} (of {self.mixed_wanted[source]} wanted)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "dropped": dict(self.dropped), "samples_per_s": self.samples_per_s}


# --------------------------------------------------------------------------- the template


def user_turn_prefix(tokenizer, system: str | None = None) -> tuple[str, str]:
    """(text before the user message, text after it) of the chat template: [system?, user]."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + \
               [{"role": "user", "content": SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except Exception as error:  # jinja raises TemplateError or anything else
        raise DataError(f"the chat template cannot render a user turn: {error}") from error
    text = text if isinstance(text, str) else text[0]
    if text.count(SENTINEL) != 1:
        raise DataError("the chat template does not render the user message verbatim once; "
                        "it cannot be cut at the start of a user turn")
    before, after = text.split(SENTINEL)
    return before, after


def control_strings(tokenizer, suffix: str) -> set[str]:
    """Strings a prompt must not contain: the tokenizer's special tokens and the template's end-of-user marker."""
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(token, "special", False):
            strings.add(str(token.content))
    if suffix.strip():
        strings.add(suffix.strip())
    return strings


def end_of_turn_ids(target, suffix: str) -> set[int]:
    """Token ids that end a user turn: the target's EOS ids and the first token of the template's text after
    the user message when that is a special token (``<|im_end|>``, ``<|eot_id|>``, ...)."""
    ids = set(target.eos_token_ids())
    tokenizer = target.tokenizer
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(token, "special", False):
            special.add(int(token_id))
    if suffix_ids and suffix_ids[0] in special:
        ids.add(int(suffix_ids[0]))
    return ids


# --------------------------------------------------------------------------- sampling


def batch_seed(seed: int, batch: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{batch}".encode(), digest_size=7).digest(), "little")


@torch.no_grad()
def sample_user_turns(target, prefix: list[int], rows: int, settings: SelfPromptSettings, seed: int,
                      stop_ids: set[int], pad_id: int) -> list[tuple[list[int], bool]]:
    """``rows`` samples continuing ``prefix`` (one HF ``generate`` call over [rows, len(prefix)], no padding):
    [(tokens before the stop token, whether a stop token came within ``max_prompt_tokens``)]."""
    from transformers import GenerationConfig

    input_ids = torch.tensor([prefix] * rows, dtype=torch.long, device=target.device)
    model = target.model
    saved = model.generation_config
    model.generation_config = GenerationConfig()  # no sampling defaults or penalties stored with the model
    devices = [target.device.index or 0] if target.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    max_new_tokens=settings.max_prompt_tokens, do_sample=True,
                                    temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                                    eos_token_id=sorted(stop_ids), pad_token_id=pad_id)
    finally:
        model.generation_config = saved
    samples = []
    for new in output[:, len(prefix):].tolist():
        stop = next((position for position, token in enumerate(new) if token in stop_ids), None)
        samples.append((new, False) if stop is None else (new[:stop], True))
    return samples


# --------------------------------------------------------------------------- the file


def self_prompts_file(target, out: str | os.PathLike, settings: SelfPromptSettings | None = None,
                      rules: PromptFilter | None = None, progress: bool = False) -> SelfPromptReport:
    """Write ``settings.count`` prompts to ``out`` (JSONL, ``.gz`` compresses) as the module docstring says."""
    settings = (settings or SelfPromptSettings()).validate()
    rules = (rules or PromptFilter()).validate()
    out = Path(out)
    report = SelfPromptReport()
    if out.exists():
        report.existed = True
        return report
    tokenizer = target.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError(f"self-generated prompts need the target's tokenizer with a chat template "
                        f"({target.name!r} has none)")
    prefix_text, suffix = user_turn_prefix(tokenizer, settings.system)
    prefix = tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    selector = PromptSelector(rules, control_strings(tokenizer, suffix))
    mixed = _mixed_conversations(settings, selector, report)  # first: self-prompts are compared with them
    report.wanted = settings.count - sum(settings.mixed_counts())
    max_samples = settings.max_samples or 4 * report.wanted
    rows = settings.rows(target.device)

    parts = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts.mkdir(exist_ok=True)
    write_or_check_manifest(parts, {"format": FORMAT, "version": VERSION, "records": None, "key": {
        "target": target.fingerprint(), "dtype": str(target.dtype).replace("torch.", ""),
        "chat_template": hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest(),
        "settings": settings.key(rows)}})
    sample_file = parts / SAMPLES
    if sample_file.exists():
        drop_cut_line(sample_file)
    kept: list[str] = []

    def take(samples: list[tuple[list[int], bool]]) -> None:
        for tokens, stopped in samples:
            report.samples += 1
            if len(kept) >= report.wanted:
                continue  # the rest of the last call's samples
            if not stopped:
                report.dropped["unfinished"] += 1
                continue
            text = tokenizer.decode(tokens, skip_special_tokens=False).strip()
            reason = selector.check(text)
            if reason is None:
                kept.append(text)
            else:
                report.dropped[reason] += 1

    batches = 0
    for batch in _read_batches(sample_file):
        take(batch)
        batches += 1
    report.resumed_samples = report.samples
    stop_ids = end_of_turn_ids(target, suffix)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids, default=0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=report.wanted, initial=len(kept), desc="self-prompts", unit="prompt", dynamic_ncols=True)
    started = time.monotonic()
    with sample_file.open("a", encoding="utf-8") as sink:
        while len(kept) < report.wanted and report.samples < max_samples:
            samples = sample_user_turns(target, prefix, rows, settings, batch_seed(settings.seed, batches),
                                        stop_ids, pad_id)
            sink.write(json.dumps({"batch": batches, "samples": [[tokens, stopped] for tokens, stopped in samples]})
                       + "\n")
            sink.flush()
            os.fsync(sink.fileno())  # a kill loses at most one generate call
            batches += 1
            before = len(kept)
            take(samples)
            report.samples_this_run += len(samples)
            report.tokens_this_run += sum(len(tokens) + int(stopped) for tokens, stopped in samples)
            if bar is not None:
                bar.update(len(kept) - before)
    report.seconds = time.monotonic() - started
    if bar is not None:
        bar.close()
    report.kept = len(kept)
    if report.kept < report.wanted:
        logger.warning("only %d of %d prompts passed the filters in %d samples (--max-samples)", report.kept,
                       report.wanted, report.samples)
    system = [{"role": "system", "content": settings.system}] if settings.system is not None else []
    records = [(system + [{"role": "user", "content": text}], "self") for text in kept] + mixed
    random.Random(settings.seed).shuffle(records)
    write_output(out, ({"index": index, "messages": messages, "source": source}
                        for index, (messages, source) in enumerate(records)))
    shutil.rmtree(parts)
    logger.info("self-generated prompts written to %s:\n%s", out, report.summary())
    return report


def _read_batches(path: Path) -> list[list[tuple[list[int], bool]]]:
    """The samples of earlier generate calls, in call order (up to the first missing or unreadable one)."""
    if not path.exists():
        return []
    batches = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break
            if entry.get("batch") != len(batches):
                break
            batches.append([(list(tokens), bool(stopped)) for tokens, stopped in entry["samples"]])
    return batches


def _mixed_conversations(settings: SelfPromptSettings, selector: PromptSelector,
                         report: SelfPromptReport) -> list[tuple[list[dict], str]]:
    """``round(fraction * count)`` conversations of each mixed-in dataset, in a seeded order, without
    duplicates of a first user message already taken: [(messages, source)]."""
    taken = []
    for (source, _), wanted in zip(settings.mix, settings.mixed_counts()):
        path = resolve_data_path(source)
        if not path.is_file():
            raise DataError(f"no data file {source} (--mix)")
        records = [messages for _, messages in load_conversations(path, DataReport(), require_answer=False)
                   if isinstance(messages, list)]  # pre-tokenized records have no text
        random.Random(settings.seed).shuffle(records)
        count = 0
        for messages in records:
            if count >= wanted:
                break
            first_user = next((m["content"] for m in messages if m["role"] == "user"), None)
            if first_user is not None and selector.register(first_user) is None:
                taken.append((messages, str(source)))
                count += 1
        report.mixed[str(source)], report.mixed_wanted[str(source)] = count, wanted
        if count < wanted:
            logger.warning("--mix %s: only %d distinct conversations (of %d wanted)", source, count, wanted)
    return taken
