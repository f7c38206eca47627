"""Held-out evaluation of a draft in training: simulated acceptance by draft position and τ.

The acceptance rule is the architecture's own (its registration's ``acceptance``, see
:mod:`beagle.models.registry`); τ turns the per-position rates into the simulated mean acceptance length.
"""

from __future__ import annotations

import torch

from beagle.models.objective import TrainBatch
from beagle.models.registry import architecture


def simulated_acceptance(draft, batch: TrainBatch, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy chain-drafting acceptance of ``draft`` by draft position on held-out ``batch`` (no noise), by
    its architecture's rule. Returns (accepted [depth], counted [depth]) sums; acc_i = accepted_i / counted_i
    and the simulated mean acceptance length τ = 1 + Σ_k Π_{i≤k} acc_i (see :func:`simulated_tau`)."""
    return architecture(draft.arch).simulated_acceptance(draft, batch, depth)


def simulated_tau(accepted: torch.Tensor, counted: torch.Tensor) -> tuple[list[float], float]:
    """Per-position acceptance rates and τ = 1 + Σ_k Π_{i≤k} acc_i."""
    rates = (accepted / counted.clamp_min(1)).tolist()
    tau, running = 1.0, 1.0
    for rate in rates:
        running *= rate
        tau += running
    return rates, tau
