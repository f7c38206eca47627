"""File-system helpers shared by every writer (checkpoints, vocabularies, trainer state, feature shards,
regenerated data, exports).

- :func:`atomic_file` / :func:`atomic_folder`: write a file or a whole folder through a private temporary
  beside the destination (``.<name>.XXXXXXXX.beagle-tmp``), moved into place only once complete. They
  never touch a name the caller did not give: the only other names they create or remove are their own
  temporaries and, while a folder is swapped, its backup ``.<name>.XXXXXXXX.beagle-old``. A destination
  that is a symbolic link is refused (one-line :class:`~beagle.errors.BeagleError`: Beagle never writes
  through a link), a path like ``a/x/../out`` creates no ``a/x``, results get the modes of newly created
  files (umask), and the temporaries a killed write left are removed (a backup whose destination is
  missing is put back instead) before the next write of the same destination.
- :func:`destination_path`: the same checks for a work folder written file by file (``train --out``,
  ``datagen --out``, ``regenerate``'s ``OUT.partial``).
- :func:`give_default_mode`: files written through a temporary file (safetensors writes 0600,
  ``tempfile.mkdtemp`` makes 0700 folders) get the mode a plain ``open(path, "w")`` would give
  them under the process umask (0644 / 0755 with the usual umask 022).
- :func:`remove_stale`: temporary files and folders left by a run that was killed (``kill -9``,
  power loss) are removed when the next run starts, so they never pile up or pass for data.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from beagle.errors import BeagleError

logger = logging.getLogger(__name__)

_umask_lock = threading.Lock()

TEMPORARY_SUFFIX = ".beagle-tmp"  # .<name>.XXXXXXXX.beagle-tmp: a file or folder being written
BACKUP_SUFFIX = ".beagle-old"  # .<name>.XXXXXXXX.beagle-old: the previous folder while a new one is swapped in
_RANDOM_PART = r"[a-z0-9_]{8}"  # what tempfile.mkstemp / mkdtemp put between prefix and suffix


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


def destination_path(path: str | os.PathLike, what: str = "--out") -> Path:
    """The path a command may write, checked: a symbolic link is refused (BeagleError; Beagle writes neither
    through a link nor over it), and ``..`` is resolved against the folders that exist, so writing
    ``a/x/../out`` never creates ``a/x``. ``what`` names the path in messages (a CLI flag)."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise BeagleError(f"{what} {str(path)!r} names no file or folder; give a path that ends in a name")
    if ".." in path.parts:
        path = Path(os.path.realpath(path.parent)) / path.name
    if path.is_symlink():
        raise BeagleError(f"{what} {path} is a symbolic link (to {os.readlink(path)}); Beagle never writes through "
                          "or over a link: pass the real path, or a new one")
    return path


def remove_stale_temporaries(destination: str | os.PathLike) -> list[Path]:
    """Remove what killed writes of ``destination`` left beside it: the ``.<name>.XXXXXXXX.beagle-tmp``
    temporaries, and ``.beagle-old`` backups, except that a backup is moved back to ``destination`` when a
    kill between the two renames of a folder swap left no ``destination``. Nothing else is touched (no
    link either). Returns what was removed or put back."""
    destination = Path(destination)
    parent = destination.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{destination.name}.") + _RANDOM_PART + r"(" + re.escape(TEMPORARY_SUFFIX)
                         + "|" + re.escape(BACKUP_SUFFIX) + r")")
    handled: list[Path] = []
    for path in sorted(parent.iterdir(), key=_modified, reverse=True):  # the newest backup is put back
        match = pattern.fullmatch(path.name)
        if match is None or path.is_symlink():
            continue
        if match.group(1) == BACKUP_SUFFIX and not os.path.lexists(destination):
            os.replace(path, destination)
            logger.warning("put back %s from %s (a save was interrupted while swapping it)", destination, path.name)
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        handled.append(path)
    if handled:
        logger.info("cleaned %d temporary file(s) of interrupted writes of %s", len(handled), destination)
    return handled


@contextmanager
def atomic_file(destination: str | os.PathLike, what: str = "--out") -> Iterator[Path]:
    """Write a file atomically: yields an empty private temporary file beside ``destination``; when the
    block ends without an error it gets the mode of a new file (umask) and replaces ``destination``
    (a crash leaves the previous file intact). Checks of :func:`destination_path`; parent folders are
    created. The block writes to the yielded path (``torch.save``, ``save_file``, ``open``)::

        with atomic_file(out / "state.pt") as temporary:
            torch.save(state, temporary)
    """
    destination = destination_path(destination, what)
    if destination.is_dir():
        raise BeagleError(f"{what} {destination} is a folder; pass the path of a file")
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(destination)
    handle, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=TEMPORARY_SUFFIX, dir=destination.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        give_default_mode(temporary)  # mkstemp makes 0600
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(destination: str | os.PathLike, what: str = "--out") -> Iterator[Path]:
    """Write a whole folder atomically: yields an empty private folder beside ``destination``; when the
    block ends without an error, everything in it gets the modes of new files and folders (umask) and it
    takes the place of ``destination`` (an existing folder is moved to a private backup, the new one
    renamed in, the backup deleted). Checks of :func:`destination_path`; an existing file is refused;
    callers decide whether an existing folder may be replaced at all."""
    destination = destination_path(destination, what)
    if destination.exists() and not destination.is_dir():
        raise BeagleError(f"{what} {destination} is a file; pass a folder")
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(destination)
    temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=TEMPORARY_SUFFIX,
                                      dir=destination.parent))
    try:
        yield temporary
        for folder, _, files in os.walk(temporary):
            give_default_mode(folder)  # mkdtemp makes 0700
            for name in files:
                give_default_mode(Path(folder) / name)  # safetensors / mkstemp write 0600
        _swap_in(temporary, destination)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already when the swap succeeded


def _swap_in(temporary: Path, destination: Path) -> None:
    if not destination.exists():
        os.replace(temporary, destination)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=BACKUP_SUFFIX, dir=destination.parent))
    os.replace(destination, backup)  # a folder may be renamed onto an empty one
    try:
        os.replace(temporary, destination)
    except BaseException:
        os.replace(backup, destination)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _modified(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0
