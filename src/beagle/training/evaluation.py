"""Held-out evaluation of a draft in training: simulated acceptance by draft position and τ.

The acceptance rule is the architecture's own (its registration's ``acceptance``, see
:mod:`beagle.models.registry`); τ turns the per-position rates into the simulated mean acceptance length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from beagle.models.objective import TrainBatch
from beagle.models.registry import architecture


def simulated_acceptance(draft, batch: TrainBatch, depth: int, top_k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy chain-drafting acceptance of ``draft`` by draft position on held-out ``batch`` (no noise), by
    its architecture's rule. Returns (accepted [depth], counted [depth]) sums; acc_i = accepted_i / counted_i
    and the simulated mean acceptance length τ = 1 + Σ_k Π_{i≤k} acc_i (see :func:`simulated_tau`).
    ``top_k`` > 1: a step accepts when the target's token is among the draft's top-k (a tree's view)."""
    return architecture(draft.arch).simulated_acceptance(draft, batch, depth, top_k)


def simulated_tau(accepted: torch.Tensor, counted: torch.Tensor) -> tuple[list[float], float]:
    """Per-position acceptance rates and τ = 1 + Σ_k Π_{i≤k} acc_i."""
    rates = (accepted / counted.clamp_min(1)).tolist()
    tau, running = 1.0, 1.0
    for rate in rates:
        running *= rate
        tau += running
    return rates, tau


@torch.no_grad()
def summed_acceptance(draft, batches: Iterable[TrainBatch], depth: int,
                      top_k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`simulated_acceptance` summed over ``batches`` (each with its states): (accepted [depth],
    counted [depth]). The draft is evaluated as it is (call ``.eval()`` first for no dropout)."""
    accepted = torch.zeros(depth, dtype=torch.float64)
    counted = torch.zeros(depth, dtype=torch.float64)
    for batch in batches:
        got, total = simulated_acceptance(draft, batch, depth, top_k)
        accepted += got
        counted += total
    return accepted, counted


def state_batches(target, dataset, indices: list[int], batch_size: int, device,
                  pad_id: int | None = None) -> Iterator[TrainBatch]:
    """``dataset[indices]`` (a ChatDataset or FeatureDataset) in micro-batches of ``batch_size`` on ``device``,
    with the target's states (the target runs when the dataset holds none)."""
    from beagle.training.inputs import make_batch, with_states

    if pad_id is None:
        pad_id = int(getattr(getattr(target, "tokenizer", None), "pad_token_id", None) or 0)
    for start in range(0, len(indices), batch_size):
        yield with_states(make_batch(dataset, indices[start : start + batch_size], 0, 0, pad_id), target, device)


def heldout_acceptance(draft, target, dataset, indices: list[int], depth: int, batch_size: int = 8,
                       pad_id: int | None = None, top_k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed simulated acceptance (accepted [depth], counted [depth]) of ``draft`` over ``dataset[indices]``,
    in micro-batches of ``batch_size`` (see :func:`state_batches`)."""
    device = next(draft.parameters()).device
    return summed_acceptance(draft, state_batches(target, dataset, indices, batch_size, device, pad_id), depth, top_k)
