"""Part files of a resumable job (``OUT.partial/``): a manifest naming what is being made, JSON lines appended
as work finishes (a line cut by a kill is dropped), and the complete output written once through a rename."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from beagle.errors import DataError
from beagle.files import atomic_file

MANIFEST = "manifest.json"


def write_or_check_manifest(parts: Path, manifest: dict) -> None:
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


def read_parts(parts: Path) -> dict[int, dict]:
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


def drop_cut_line(path: Path) -> None:
    """Truncate a part file after its last complete line (a kill can leave a cut one)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def write_output(out: Path, lines: Iterator[dict]) -> None:
    """JSONL (gzip when ``out`` ends in .gz) through a temporary file renamed into place."""
    with atomic_file(out) as temporary:
        opener = gzip.open if out.suffix == ".gz" else open
        with opener(temporary, "wt", encoding="utf-8") as sink:
            for line in lines:
                sink.write(json.dumps(line, ensure_ascii=False) + "\n")
