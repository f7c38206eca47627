"""The EAGLE-2 baseline's training objective (with EAGLE-3's training-time test) and its simulated
acceptance, behind the contract of :mod:`beagle.models.objective`.

- :class:`Eagle2Objective`: EAGLE-2 (causal self-attention) and, with ``ttt_steps > 1``, the EAGLE-3-style
  training-time test that appends queries and keys per unrolled step (memory grows with steps).
- :func:`simulated_acceptance`: per-depth greedy acceptance on held-out data, through :func:`eagle_unroll`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from beagle.models.eagle2 import ARCHITECTURE
from beagle.models.eagle2.masks import unrolled_mask
from beagle.models.objective import (
    ObjectiveOutput,
    TrainBatch,
    draft_hits,
    greedy_reference,
    selected_losses,
    share,
)
from beagle.models.settings import ObjectiveSettings


def make_objective(stage: int, settings: ObjectiveSettings):
    """One stage: the same objective whatever ``stage``."""
    return Eagle2Objective(settings)


def eagle_unroll(draft, input_ids: torch.Tensor, states: torch.Tensor, steps: int) -> Iterator[torch.Tensor]:
    """Unrolled EAGLE-2 draft steps over a sequence (EAGLE-3's training-time test when steps > 1).

    input_ids: [B, T]; states: [B, T, d] float32 (input features, noisy in training). Sequence index q
    holds position i = q + 1: token x_i. Step 1 fuses (x_i, H_{i-1}) and attends causally; step j fuses
    (x_i, f^{j-1}_{i-1}), the draft's own previous-step feature, and attends to the step-1 keys up to the
    chain root i-j+1 plus one key per later step along the diagonal (:func:`unrolled_mask`). Queries and
    keys of every step are appended and the graph is kept, so memory grows with the number of steps.
    Yields f^j: [B, T-1, d] (f^j at index q predicts H_{q+1} and token x_{q+2}).
    """
    batch, length = input_ids.shape
    count = length - 1
    tokens = input_ids[:, 1:]
    positions = torch.arange(1, length, device=input_ids.device).expand(batch, count)
    previous = states[:, :-1]
    past = None
    for step in range(1, steps + 1):
        mask = unrolled_mask(count, step, input_ids.device)
        features, keys, values = draft.layer(draft.fuse(tokens, previous), positions, past, mask)
        past = (keys, values) if past is None else (torch.cat([past[0], keys], 2), torch.cat([past[1], values], 2))
        yield features
        previous = torch.cat([torch.zeros_like(features[:, :1]), features[:, :-1]], dim=1)


class Eagle2Objective:
    """EAGLE-2 baseline: causal self-attention, SmoothL1 (1.0) + soft CE (0.1), uniform noise std 0.2.

    With ``ttt_steps`` S > 1: EAGLE-3-style training-time test. Step j's loss is taken at every position
    with a chain root (index q ≥ j − 1), weighted decay^(j−1) (EAGLE-3 uses 0.8), normalised over steps.
    The whole unrolled graph is kept until one backward at the end (memory grows with S).
    """

    name = "eagle2"

    def __init__(self, settings: ObjectiveSettings):
        self.settings = settings.resolved(ARCHITECTURE.loss_defaults)
        self.num_terms = self.settings.ttt_steps
        weights = torch.tensor([self.settings.ttt_decay ** j for j in range(self.num_terms)], dtype=torch.float64)
        self.weights = (weights / weights.sum()).tolist()

    def _valid(self, batch: TrainBatch, step: int) -> torch.Tensor:
        """[B, T-1] bool at indices q (position q+1)."""
        valid = batch.position_mask[:, 1:].clone()
        valid[:, : step - 1] = False
        return valid

    def counts(self, batch: TrainBatch) -> torch.Tensor:
        return torch.stack([self._valid(batch, j).sum() for j in range(1, self.num_terms + 1)]).cpu()

    def __call__(self, draft, batch: TrainBatch, denominators: torch.Tensor, backward: bool = True) -> ObjectiveOutput:
        settings = self.settings
        noisy = batch.noisy_states(settings.noise, settings.noise_std)
        targets = batch.states[:, 1:]
        total = None
        metrics = {"ce": 0.0, "vloss": 0.0}
        for step, features in enumerate(eagle_unroll(draft, batch.input_ids, noisy, self.num_terms), start=1):
            weight, count = self.weights[step - 1], denominators[step - 1]
            loss, parts = selected_losses(draft, features, targets, self._valid(batch, step), settings)
            loss = loss.sum() * (weight / max(float(count), 1.0))
            total = loss if total is None else total + loss
            metrics["ce"] += weight * share(parts["ce"], count)
            metrics["vloss"] += weight * share(parts["vloss"], count)
            metrics[f"top1@{step}"] = share(parts["top1"], count)
        metrics["loss"] = float(total.detach())
        if self.num_terms == 1:
            metrics["top1"] = metrics["top1@1"]
        return ObjectiveOutput(total, metrics)


@torch.no_grad()
def simulated_acceptance(draft, batch: TrainBatch, depth: int,
                         top_k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy chain-drafting acceptance by draft position on held-out data (no noise), through
    :func:`eagle_unroll`: step i of the chain rooted at index r is unrolled step i at index r + i - 1.
    Counting as in Beagle's (:func:`beagle.models.beagle.objective.simulated_acceptance`): step i counts
    while steps 1..i-1 were accepted and the data followed the target's argmax there.

    Returns (accepted [depth], counted [depth]) sums.
    """
    accepted = torch.zeros(depth, dtype=torch.float64)
    counted = torch.zeros(depth, dtype=torch.float64)
    position_mask = batch.position_mask
    target_argmax, follows_data = greedy_reference(draft, batch)
    states = batch.states.float()
    alive = position_mask[:, 1:].clone()  # chain root index r (position r+1)
    for step, features in enumerate(eagle_unroll(draft, batch.input_ids, states, depth), start=1):
        count = features.shape[1]
        shift = step - 1
        if shift >= count:
            break
        index = torch.arange(shift, count, device=states.device)  # q; root r = q - shift
        live = alive[:, : count - shift] & position_mask[:, 1:][:, index]
        hit = draft_hits(draft, features[:, index], target_argmax[:, 1:][:, index], top_k, where=live)
        accepted[step - 1] += float((live & hit).sum())
        counted[step - 1] += float(live.sum())
        alive[:, : count - shift] = live & hit & follows_data[:, 1:][:, index]
    return accepted, counted
