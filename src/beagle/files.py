"""File-system helpers shared by the writers (checkpoints, trainer state, feature shards).

- :func:`give_default_mode`: files written through a temporary file (safetensors writes 0600,
  ``tempfile.mkdtemp`` makes 0700 folders) get the mode a plain ``open(path, "w")`` would give
  them under the process umask (0644 / 0755 with the usual umask 022).
- :func:`remove_stale`: temporary files and folders left by a run that was killed (``kill -9``,
  power loss) are removed when the next run starts, so they never pile up or pass for data.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc on Linux; elsewhere set and restored under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def give_default_mode(path: str | os.PathLike) -> None:
    """chmod ``path`` to 0666 & ~umask (a file) or 0777 & ~umask (a folder), as if newly created."""
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    mode = base & ~current_umask()
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)


def remove_stale(folder: str | os.PathLike, patterns: tuple[str, ...]) -> list[Path]:
    """Delete the entries of ``folder`` matching any glob in ``patterns`` (files or whole folders).

    Only for names that our own writers use for temporaries (all start with a dot). Returns what
    was removed; logs it at INFO.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    if removed:
        logger.info("removed %d stale temporary file(s) in %s left by an interrupted run: %s", len(removed),
                    folder, ", ".join(path.name for path in removed))
    return removed
