"""Held-out evaluation of a draft in training: simulated acceptance by draft position and τ.

The acceptance rule is the architecture's own (its registration's ``acceptance``, see
:mod:`beagle.models.registry`); τ turns the per-position rates into the simulated mean acceptance length.
"""

from __future__ import annotations

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
def heldout_acceptance(draft, target, dataset, indices: list[int], depth: int, batch_size: int = 8,
                       pad_id: int | None = None, top_k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed simulated acceptance (accepted [depth], counted [depth]) of ``draft`` over ``dataset[indices]``
    (a ChatDataset or FeatureDataset), in micro-batches of ``batch_size``; the target runs when the dataset
    holds no states. The draft is evaluated as it is (call ``.eval()`` first for no dropout)."""
    from beagle.training.inputs import make_batch, with_states

    if pad_id is None:
        pad_id = int(getattr(getattr(target, "tokenizer", None), "pad_token_id", None) or 0)
    device = next(draft.parameters()).device
    accepted = torch.zeros(depth, dtype=torch.float64)
    counted = torch.zeros(depth, dtype=torch.float64)
    for start in range(0, len(indices), batch_size):
        batch = with_states(make_batch(dataset, indices[start : start + batch_size], 0, 0, pad_id), target, device)
        got, total = simulated_acceptance(draft, batch, depth, top_k)
        accepted += got
        counted += total
    return accepted, counted
