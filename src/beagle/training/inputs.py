"""What the training loop feeds on: the training and held-out datasets, the held-out split, and
micro-batches with their per-sequence seeds (:mod:`beagle.data` reads and prepares the data itself).

Randomness that touches training (noise, window offsets) is drawn per sequence from (seed, step,
sequence index) (:func:`sequence_seed`), so results do not depend on the batch split, the number of ranks
or on resuming.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from beagle.data.batches import ChatDataset, collate
from beagle.data.features import FeatureDataset, target_states
from beagle.data.regenerate import RegenerateSettings, cached_regeneration, regenerate_file
from beagle.models.objective import TrainBatch
from beagle.ranks import Distributed
from beagle.training.config import TrainConfig

logger = logging.getLogger(__name__)


def sequence_seed(seed: int, step: int, sample: int) -> int:
    """The seed of one sequence's noise / window offsets at one step (independent of batching)."""
    value = (seed * 0x9E3779B1 + step * 0x85EBCA77 + sample * 0xC2B2AE3D) & ((1 << 62) - 1)
    return value ^ (value >> 29)



def load_dataset(config: TrainConfig, target, dist: Distributed):
    if config.features is not None:
        return feature_dataset(config.features, target)
    data = regenerated_data(config, target, dist) if config.regenerate else config.data
    return ChatDataset.from_file(data, target.tokenizer, config.max_length, progress=config.progress and dist.is_main)


def feature_dataset(folder, target):
    dataset = FeatureDataset(folder)
    dataset.check_target(target.fingerprint(), target.weights_fingerprint())
    return dataset


def regenerated_data(config: TrainConfig, target, dist: Distributed) -> Path:
    """The cached target-regenerated copy of ``config.data`` (made now when missing; every rank takes a shard)."""
    settings = RegenerateSettings(max_new_tokens=config.regenerate_max_new_tokens, max_length=config.max_length,
                                  batch_size=config.regenerate_batch_size)
    path = cached_regeneration(target, config.data, settings)
    report = regenerate_file(target, config.data, path, settings, dist, progress=config.progress and dist.is_main)
    if report.existed:
        logger.info("using regenerated answers from %s", path)
    return path


def load_eval_dataset(config: TrainConfig, target):
    """--eval-data: a `beagle datagen` folder or a conversations file (tokenized like the training data)."""
    if Path(config.eval_data).is_dir():
        return feature_dataset(config.eval_data, target)
    return ChatDataset.from_file(config.eval_data, target.tokenizer, config.max_length)


def split_heldout(size: int, config: TrainConfig) -> tuple[list[int], list[int]]:
    """Deterministic (train indices, held-out indices) for a dataset of ``size`` sequences."""
    if config.heldout_count is not None:
        count = config.heldout_count
    else:
        count = min(config.heldout_max, max(1, round(size * config.heldout_fraction))) if size > 1 else 0
    count = max(0, min(count, size - 1))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(config.seed + 4242)).tolist()
    return sorted(order[count:]), sorted(order[:count])


def make_batch(dataset, indices: list[int], step: int, seed: int, pad_id: int):
    collated = collate([dataset[i] for i in indices], pad_id=pad_id)
    seeds = torch.tensor([sequence_seed(seed, step, i) for i in indices], dtype=torch.long)
    return TrainBatch(collated["input_ids"], collated["attention_mask"], collated["loss_mask"], collated["lengths"],
                      collated.get("states"), seeds)


def with_states(batch, target, device):
    batch = batch.to(device)
    if batch.states is None:  # online: run the frozen target
        batch.states = target_states(target, batch.input_ids, batch.attention_mask)
    return batch
