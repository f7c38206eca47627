"""Building draft vocabularies from chat data, and drafts that carry one.

Counting goes through the training data pipeline (:mod:`beagle.data.conversations`): conversations are
rendered with the target's chat template and only assistant tokens are counted — token t (t ≥ 1) of a
sequence whose loss mask is set, the tokens a draft is trained to predict. Regenerated answers
(``--regenerate``: the target's own greedy replies) are the same records with other assistant turns.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from beagle.errors import BeagleError, DataError
from beagle.files import atomic_folder, destination_path
from beagle.vocab.core import VOCAB_FILE_NAME, DraftVocab, build_vocab

logger = logging.getLogger(__name__)


def assistant_tokens(input_ids, loss_mask) -> np.ndarray:
    """The counted tokens of one sequence: input_ids [L], loss_mask [L] -> ids [M] (positions t ≥ 1 with the
    mask set; position 0 is never predicted)."""
    ids = np.asarray(input_ids).reshape(-1)
    mask = np.asarray(loss_mask, dtype=bool).reshape(-1)
    if ids.shape != mask.shape:
        raise DataError(f"input_ids ({ids.shape[0]}) and loss_mask ({mask.shape[0]}) differ in length")
    return ids[1:][mask[1:]].astype(np.int64)


def count_assistant_tokens(sequences: Iterable[tuple[object, object]], vocab_size: int, *, progress: bool = False,
                           total: int | None = None) -> torch.Tensor:
    """Token counts over the assistant tokens of ``(input_ids [L], loss_mask [L])`` pairs -> [V] int64.
    DataError for an id outside ``[0, vocab_size)``."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    iterator = sequences
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(sequences, total=total, desc="counting", unit="seq", dynamic_ncols=True)
    for input_ids, loss_mask in iterator:
        tokens = assistant_tokens(_numpy(input_ids), _numpy(loss_mask))
        if not tokens.size:
            continue
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            bad = int(tokens.max() if tokens.max() >= vocab_size else tokens.min())
            raise DataError(f"token id {bad} in the data is outside the target's vocabulary ({vocab_size} tokens)")
        counts += np.bincount(tokens, minlength=vocab_size)
    return torch.from_numpy(counts)


def dataset_sequences(dataset, indices: Sequence[int] | None = None) -> Iterator[tuple[object, object]]:
    """(input_ids, loss_mask) of a :class:`~beagle.data.batches.ChatDataset` or
    :class:`~beagle.data.features.FeatureDataset` (without reading states), for ``indices`` (default all)."""
    indices = range(len(dataset)) if indices is None else indices
    examples = getattr(dataset, "examples", None)
    for index in indices:
        if examples is not None:
            yield examples[index].input_ids, examples[index].loss_mask
        elif hasattr(dataset, "tokens"):
            yield dataset.tokens(index)
        else:
            item = dataset[index]
            yield item["input_ids"], item["loss_mask"]


def load_chat_examples(data, tokenizer, *, max_length: int = 2048, limit: int | None = None,
                       progress: bool = False):
    """Read and tokenize a data file or asset the way training does -> (examples, DataReport).

    limit: the first ``limit`` usable records only. Regenerated answers are a file of their own
    (:func:`beagle.data.regenerate.regenerate_file`), read here like any other.
    """
    from beagle.data.conversations import (
        DataReport,
        encode_conversations,
        load_conversations,
        resolve_data_path,
    )

    path = resolve_data_path(data)
    report = DataReport()
    records = load_conversations(path, report)
    if limit is not None:
        if limit < 1:
            raise BeagleError(f"--limit must be at least 1, got {limit}")
        records = records[:limit]
    examples = encode_conversations(records, tokenizer, max_length, report, progress=progress)
    if not examples:
        raise DataError(f"no usable records in {path} ({report.summary()})")
    return examples, report


def vocab_from_counts(counts: torch.Tensor, size: int, target, data: str | None) -> DraftVocab:
    """The ``size`` most frequent counted ids, the target's EOS / end-of-turn ids always among them."""
    return build_vocab(counts, size, sorted(target.eos_token_ids()), target=str(target.name), data=data)


def vocab_from_dataset(dataset, size: int, target, data: str | None, indices: Sequence[int] | None = None,
                       progress: bool = False) -> DraftVocab:
    """A vocabulary of ``size`` ids from the assistant tokens of a training dataset (``indices``: its training
    split; default all)."""
    total = len(indices) if indices is not None else len(dataset)
    counts = count_assistant_tokens(dataset_sequences(dataset, indices), int(target.vocab_size), progress=progress,
                                    total=total)
    return vocab_from_counts(counts, size, target, data)


def write_draft_with_vocab(draft_dir, vocab: DraftVocab, out_dir) -> Path:
    """A new draft folder ``out_dir`` = the checkpoint in ``draft_dir`` (weights copied byte for byte) + the
    vocabulary (``draft_vocab.safetensors``, ``draft_vocab_size`` / ``draft_vocab_coverage`` in its config).
    The training-free route (FR-Spec): any trained draft can propose from a subset. Written atomically."""
    from beagle.assets.shipped import resolve_draft_path
    from beagle.models.checkpoint import (
        CONFIG_NAME,
        WEIGHTS_NAME,
        check_replaceable,
        remove_legacy_temporaries,
    )
    from beagle.models.config import DraftConfig

    source = resolve_draft_path(draft_dir)
    if not (source / CONFIG_NAME).is_file() or not (source / WEIGHTS_NAME).is_file():
        raise BeagleError(f"{source} is not a draft checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    out = destination_path(out_dir)
    if out.resolve() == source.resolve():
        raise BeagleError(f"--out {out} is the draft folder itself; write the draft with the vocabulary to a new folder")
    if out.is_file():
        raise BeagleError(f"--out {out} is a file; choose a new folder")
    check_replaceable(out, "--out")
    config = DraftConfig.load(source / CONFIG_NAME)
    vocab.check(config.vocab_size, config.target.get("name"))
    config.draft_vocab_size, config.draft_vocab_coverage = vocab.size, vocab.coverage
    remove_legacy_temporaries(out)
    with atomic_folder(out) as temporary:
        shutil.copyfile(source / WEIGHTS_NAME, temporary / WEIGHTS_NAME)
        vocab.save(temporary / VOCAB_FILE_NAME)
        config.save(temporary / CONFIG_NAME)
    logger.info("wrote %s = %s + a %d-token draft vocabulary", out, source, vocab.size)
    return out


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
