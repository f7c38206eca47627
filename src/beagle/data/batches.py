"""Training batches: tokenized conversations as a dataset (:class:`ChatDataset`), a deterministic, resumable
batch order (:class:`ShuffledBatches`) and right-padding into tensors (:func:`collate`)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from beagle.data.conversations import (
    DataReport,
    Example,
    encode_conversations,
    load_conversations,
    resolve_data_path,
)
from beagle.errors import DataError

logger = logging.getLogger(__name__)


class ChatDataset(torch.utils.data.Dataset):
    """Tokenized conversations. Item i -> {"input_ids": [L] long, "loss_mask": [L] bool}."""

    def __init__(self, examples: list[Example], report: DataReport | None = None):
        self.examples = examples
        self.report = report or DataReport(total=len(examples), kept=len(examples))

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        tokenizer,
        max_length: int = 2048,
        progress: bool = False,
    ) -> "ChatDataset":
        """Read, validate and tokenize a data file or named data asset."""
        path = resolve_data_path(path)
        report = DataReport()
        records = load_conversations(path, report)
        examples = encode_conversations(records, tokenizer, max_length, report, progress=progress)
        logger.info("%s: %s", path, report.summary())
        if not examples:
            raise DataError(f"no usable training records in {path} ({report.summary()})")
        return cls(examples, report)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.examples[index]
        return {
            "input_ids": torch.from_numpy(example.input_ids.astype(np.int64)),
            "loss_mask": torch.from_numpy(example.loss_mask.copy()),
        }

    @property
    def lengths(self) -> list[int]:
        return [int(example.input_ids.shape[0]) for example in self.examples]

    def content_digest(self) -> str:
        """A hash of the tokenized examples (ids and loss masks, in order): what training sees, whatever the
        file is called or where it lies. ~1 GB/s, so a second for 100M tokens."""
        digest = hashlib.blake2b(digest_size=16)
        for example in self.examples:
            ids = np.ascontiguousarray(example.input_ids, dtype="<i4")
            digest.update(len(ids).to_bytes(8, "little"))
            digest.update(ids.tobytes())
            digest.update(np.packbits(example.loss_mask.astype(bool)).tobytes())
        return "tokens:" + digest.hexdigest()


class ShuffledBatches:
    """Deterministic, resumable batch order: epoch e uses a permutation drawn from (seed, e).

    ``batches(epoch)`` -> list of index lists (size ``batch_size``; the last partial batch is
    dropped so every step sees a full global batch). The trainer stores (epoch, position) to resume.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int):
        self.indices = list(indices)
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.indices), generator=generator).tolist()
        shuffled = [self.indices[i] for i in order]
        return [shuffled[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]

    def iterate(self, epoch: int, position: int = 0) -> Iterator[tuple[int, list[int]]]:
        """Yield (position, batch) from ``position`` on."""
        for number, batch in enumerate(self.batches(epoch)[position:], start=position):
            yield number, batch


def collate(items: Sequence[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad items to the longest: input_ids [B, T] long, attention_mask [B, T] bool,
    loss_mask [B, T] bool, lengths [B] long, and states [B, T, d] when the items carry them."""
    lengths = torch.tensor([item["input_ids"].shape[0] for item in items], dtype=torch.long)
    batch, length = len(items), int(lengths.max())
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(batch, length, dtype=torch.bool)
    for row, item in enumerate(items):
        input_ids[row, : lengths[row]] = item["input_ids"]
        loss_mask[row, : lengths[row]] = item["loss_mask"]
    out = {
        "input_ids": input_ids,
        "attention_mask": torch.arange(length)[None] < lengths[:, None],
        "loss_mask": loss_mask,
        "lengths": lengths,
    }
    if "states" in items[0]:
        states = items[0]["states"]
        padded = states.new_zeros(batch, length, states.shape[-1])
        for row, item in enumerate(items):
            padded[row, : lengths[row]] = item["states"]
        out["states"] = padded
    return out
