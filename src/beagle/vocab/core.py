"""The draft vocabulary: kept target ids, their file format, validation, and choosing them from counts.

File format (``beagle vocab --out FILE``; inside a draft checkpoint as ``draft_vocab.safetensors``)::

    safetensors, one tensor  "draft_vocab": int32 [N], the kept target token ids, unique, ascending
    metadata (strings):      format = "beagle-draft-vocab", version = "1", size = N,
                             target = the target's name, target_vocab_size = V,
                             coverage = fraction of the counted assistant tokens whose id is kept ("" = unknown),
                             tokens = assistant tokens counted, data = what was counted (a path or asset name)

Draft index i (a row of the restricted head, a column of the draft's proposal logits) stands for target id
``ids[i]``. Only ``draft_vocab`` is required when reading (hand-made files work); ids are checked against the
target (integers, 1-D, non-empty, no negatives, no duplicates, all < V) and sorted.

*Coverage* is measured over assistant tokens: token t (t ≥ 1) of a sequence whose loss mask is set, i.e. exactly
the tokens the draft is trained to predict (:attr:`beagle.models.objective.TrainBatch.position_mask`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from beagle.errors import BeagleError
from beagle.files import atomic_file, destination_path

logger = logging.getLogger(__name__)

VOCAB_FILE_NAME = "draft_vocab.safetensors"  # the vocabulary inside a draft checkpoint folder
VOCAB_TENSOR = "draft_vocab"
VOCAB_FORMAT = "beagle-draft-vocab"
VOCAB_VERSION = "1"


@dataclass
class DraftVocab:
    """A draft vocabulary.

    ids: [N] int64 kept target ids (unique, ascending); target / target_vocab_size: the target it was built
    for (None when unknown); coverage: fraction of the counted assistant tokens inside the vocabulary;
    tokens: assistant tokens counted; data: what was counted; source: the file it was read from.
    """

    ids: torch.Tensor
    target: str | None = None
    target_vocab_size: int | None = None
    coverage: float | None = None
    tokens: int | None = None
    data: str | None = None
    source: str | None = None

    def __post_init__(self):
        self.ids = checked_ids(self.ids, self.source or "draft vocabulary")

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        return (f"DraftVocab(size={self.size}, target={self.target!r}, target_vocab_size={self.target_vocab_size}, "
                f"coverage={self.coverage}, tokens={self.tokens}, data={self.data!r})")

    def check(self, vocab_size: int, target_name: str | None = None) -> "DraftVocab":
        """Raise BeagleError unless every id fits a target vocabulary of ``vocab_size`` tokens."""
        label = self.source or "the draft vocabulary"
        if self.target_vocab_size is not None and self.target_vocab_size != vocab_size:
            built = f" ({self.target!r})" if self.target else ""
            here = f" ({target_name!r})" if target_name else ""
            raise BeagleError(f"{label} was built for a target{built} with {self.target_vocab_size} tokens; this "
                              f"target{here} has {vocab_size}: build one for it with `beagle vocab`")
        largest = int(self.ids[-1])
        if largest >= vocab_size:
            raise BeagleError(f"{label}: id {largest} is outside the target's vocabulary ({vocab_size} tokens)")
        return self

    def describe(self) -> str:
        """One line: size, and coverage when known."""
        text = f"{self.size} tokens"
        if self.target_vocab_size:
            text += f" of {self.target_vocab_size}"
        if self.coverage is not None:
            text += f", covering {100 * self.coverage:.2f} % of the assistant tokens"
            if self.tokens:
                text += f" ({self.tokens:,} counted"
                text += f" in {self.data})" if self.data else ")"
        return text

    def metadata(self) -> dict[str, str]:
        def text(value) -> str:
            return "" if value is None else str(value)

        return {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "size": str(self.size), "target": text(self.target),
                "target_vocab_size": text(self.target_vocab_size),
                "coverage": "" if self.coverage is None else repr(float(self.coverage)),
                "tokens": text(self.tokens), "data": text(self.data)}

    def save(self, path) -> Path:
        """Write the vocabulary file (atomically, with the mode of a new file: :func:`beagle.files.atomic_file`)."""
        from safetensors.torch import save_file

        path = destination_path(path, "the vocabulary file")
        with atomic_file(path, "the vocabulary file") as temporary:
            save_file({VOCAB_TENSOR: self.ids.to(torch.int32).contiguous()}, str(temporary), metadata=self.metadata())
        return path

    @classmethod
    def load(cls, path) -> "DraftVocab":
        """Read a vocabulary file; malformed files raise a one-line BeagleError."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise BeagleError(f"draft vocabulary {path} does not exist; build one with `beagle vocab`")
        try:
            with safe_open(str(path), framework="pt") as handle:
                names = list(handle.keys())
                metadata = handle.metadata() or {}
                ids = handle.get_tensor(VOCAB_TENSOR) if VOCAB_TENSOR in names else None
        except Exception as error:  # safetensors raises its own error types for malformed headers
            detail = " ".join(str(error).split())[:200]
            raise BeagleError(f"cannot read draft vocabulary {path}: {detail}") from None
        if ids is None:
            raise BeagleError(f"{path} is not a draft vocabulary (no {VOCAB_TENSOR!r} tensor; it has "
                              f"{', '.join(names[:4]) or 'none'}); build one with `beagle vocab`")
        return cls(ids, target=metadata.get("target") or None,
                   target_vocab_size=_int_or_none(metadata.get("target_vocab_size"), path, "target_vocab_size"),
                   coverage=_float_or_none(metadata.get("coverage"), path),
                   tokens=_int_or_none(metadata.get("tokens"), path, "tokens"), data=metadata.get("data") or None,
                   source=str(path))


def load_vocab(vocab, vocab_size: int | None = None, target_name: str | None = None) -> DraftVocab:
    """A DraftVocab, a path to a vocabulary file or a shipped vocabulary name (``smollm2-vocab-8192``)
    -> a DraftVocab (checked against ``vocab_size`` when given)."""
    if not isinstance(vocab, DraftVocab):
        from beagle.assets.shipped import resolve_vocab_path

        vocab = DraftVocab.load(resolve_vocab_path(vocab))
    if vocab_size is not None:
        vocab.check(vocab_size, target_name)
    return vocab


def checked_ids(ids, label: str = "draft vocabulary") -> torch.Tensor:
    """Validate kept ids (a tensor or a sequence of ints) -> [N] int64 on the CPU, ascending.

    Raises a one-line BeagleError for non-integers, a shape other than [N], an empty set, negative ids
    and duplicates.
    """
    if not isinstance(ids, torch.Tensor):
        try:
            ids = torch.as_tensor(list(ids))
        except (TypeError, ValueError, RuntimeError) as error:
            raise BeagleError(f"{label}: ids must be a list of integers ({error})") from None
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise BeagleError(f"{label}: ids must be integers, got {str(ids.dtype).replace('torch.', '')}")
    if ids.dim() != 1:
        raise BeagleError(f"{label}: ids must be a 1-D list, got shape {list(ids.shape)}")
    if ids.numel() == 0:
        raise BeagleError(f"{label} is empty")
    ids = ids.detach().to("cpu", torch.int64)
    smallest = int(ids.min())
    if smallest < 0:
        raise BeagleError(f"{label}: negative id {smallest}")
    ids = ids.sort().values
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if repeated.numel():
        raise BeagleError(f"{label}: duplicate id {int(repeated[0])} ({repeated.numel()} duplicates)")
    return ids


def build_vocab(counts: torch.Tensor, size: int, keep: Iterable[int] = (), *, target: str | None = None,
                data: str | None = None) -> DraftVocab:
    """The ``size`` most frequent ids of ``counts`` ([V] token counts), plus the ids in ``keep`` (EOS /
    end-of-turn ids: always kept, they count towards ``size``). Ties go to the smaller id; ids never seen fill
    up a size beyond the distinct tokens counted (smallest ids first). Coverage = counted share kept."""
    counts = counts.detach().to("cpu", torch.int64).flatten()
    vocab_size = counts.numel()
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= vocab_size:
        raise BeagleError(f"the draft vocabulary size must be an integer from 1 to {vocab_size} (the target's "
                          f"vocabulary), got {size!r}")
    kept = torch.zeros(vocab_size, dtype=torch.bool)
    keep = sorted({int(token) for token in keep})
    if keep and not 0 <= keep[0] <= keep[-1] < vocab_size:
        raise BeagleError(f"end-of-sequence ids {keep} lie outside the target's vocabulary ({vocab_size} tokens)")
    if len(keep) > size:
        raise BeagleError(f"a draft vocabulary of {size} tokens cannot hold the {len(keep)} end-of-sequence ids "
                          f"that are always kept ({keep})")
    kept[keep] = True
    order = torch.argsort(-counts, stable=True)  # most frequent first, ties by id
    rest = order[~kept[order]][: size - len(keep)]
    kept[rest] = True
    ids = torch.nonzero(kept)[:, 0]
    total = int(counts.sum())
    distinct = int((counts > 0).sum())
    if size > distinct + len(keep):
        logger.info("only %d distinct tokens were counted; the rest of the %d ids are unseen ones", distinct, size)
    coverage = float(counts[ids].sum()) / total if total else None
    return DraftVocab(ids, target=target, target_vocab_size=vocab_size, coverage=coverage, tokens=total, data=data)


def coverage_of_sizes(counts: torch.Tensor, sizes: Sequence[int], keep: Iterable[int] = ()) -> dict[int, float]:
    """{size: coverage} of the vocabularies :func:`build_vocab` would choose (sizes above V are skipped)."""
    keep = list(keep)
    return {size: build_vocab(counts, size, keep).coverage or 0.0 for size in sizes
            if len(set(keep)) <= size <= counts.numel()}


def _int_or_none(value, path, key) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise BeagleError(f"draft vocabulary {path}: metadata {key}={value!r} is not an integer") from None


def _float_or_none(value, path) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise BeagleError(f"draft vocabulary {path}: metadata coverage={value!r} is not a number") from None
