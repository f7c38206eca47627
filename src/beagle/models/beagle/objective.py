"""Beagle's training objectives (paper §2.2–2.4) and its simulated acceptance, behind the contract of
:mod:`beagle.models.objective`.

- :class:`BeagleStage1`: one forward with the inverse block mask; every position with a visible
  state counts equally (L_early, paper Eq. 4).
- :class:`BeagleStage2`: training-time simulation (paper §2.4), constant memory.
- :func:`simulated_acceptance`: per-depth greedy acceptance on held-out data, through
  :func:`simulate_drafting`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from beagle.models.beagle import ARCHITECTURE
from beagle.models.beagle.masks import (
    has_context,
    inverse_block_mask,
    most_recent_visible,
    simulation_mask,
    window_positions,
)
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
    """Stage 1: multi-token prediction (:class:`BeagleStage1`); stage 2: the simulation (:class:`BeagleStage2`)."""
    return BeagleStage1(settings) if stage == 1 else BeagleStage2(settings)


# --------------------------------------------------------------------------- stage 1


class BeagleStage1:
    """Multi-token prediction with the inverse block mask (window k, random offset per sequence).

    One forward over [B, T] queries and the noisy true states; the query at window position i is an
    i-step-ahead prediction. Terms = window positions 1..k (for per-position metrics); the loss is the
    mean over all of them, window position 1 weighted ``first_position_weight`` (1: every trained position
    counts equally, the paper's; position 1 then carries ≈ 1/k of the loss).
    """

    name = "beagle-stage1"

    def __init__(self, settings: ObjectiveSettings):
        self.settings = settings.resolved(ARCHITECTURE.loss_defaults)
        self.num_terms = self.settings.window

    def _selection(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        window = self.settings.window
        length = batch.input_ids.shape[1]
        offsets = batch.offsets(window)
        valid = batch.position_mask & has_context(length, window, offsets)
        return offsets, valid, window_positions(length, window, offsets)

    def counts(self, batch: TrainBatch) -> torch.Tensor:
        _, valid, positions = self._selection(batch)
        return torch.stack([(valid & (positions == i)).sum() for i in range(1, self.num_terms + 1)]).cpu()

    def __call__(self, draft, batch: TrainBatch, denominators: torch.Tensor, backward: bool = True) -> ObjectiveOutput:
        settings = self.settings
        offsets, valid, positions = self._selection(batch)
        mask = inverse_block_mask(batch.input_ids.shape[1], settings.window, offsets)
        hidden = draft(batch.input_ids, batch.noisy_states(settings.noise, settings.noise_std), mask)  # [B, T, d]
        loss, parts = selected_losses(draft, hidden, batch.states, valid, settings)
        total = float(denominators.sum())
        first = settings.first_position_weight
        if first == 1.0:
            loss = loss.sum() / max(total, 1.0)
        else:  # the weighted mean over the global batch: sum_i w_i · l_i / sum_i w_i
            weights = torch.where(positions[valid] == 1, first, 1.0).to(loss.dtype)
            loss = (loss * weights).sum() / max(total + (first - 1.0) * float(denominators[0]), 1.0)
        metrics = {"loss": float(loss.detach()), "ce": share(parts["ce"], total),
                   "vloss": share(parts["vloss"], total), "top1": share(parts["top1"], total)}
        selected_positions = positions[valid]
        for i in range(1, self.num_terms + 1):
            metrics[f"top1@{i}"] = share(parts["top1"][selected_positions == i], denominators[i - 1])
        return ObjectiveOutput(loss, metrics)


# --------------------------------------------------------------------------- stage 2


@dataclass
class SimulationStep:
    """Step ``step`` of the stage-2 simulation: the queries at window position ``step``.

    query_positions: [B, M] long; query_valid: [B, M] bool (rows of sequences with fewer blocks are
    padding); hidden: [B, M, d] their draft states.
    """

    step: int
    query_positions: torch.Tensor
    query_valid: torch.Tensor
    hidden: torch.Tensor


def _rows_where(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """selected [B, T] bool -> (positions [B, M] of the True entries in order, padded with 0; valid [B, M])."""
    length = selected.shape[1]
    counts = selected.sum(dim=1)
    width = max(int(counts.max()), 1)
    keys = (~selected).long() * length + torch.arange(length, device=selected.device)
    positions = keys.argsort(dim=1)[:, :width]
    valid = torch.arange(width, device=selected.device)[None] < counts[:, None]
    return positions.masked_fill(~valid, 0), valid


def simulate_drafting(
    draft,
    input_ids: torch.Tensor,
    states: torch.Tensor,
    window: int,
    offsets: torch.Tensor,
    steps: int,
) -> Iterator[SimulationStep]:
    """Training-time simulation of drafting (paper §2.4), as a generator of steps.

    input_ids: [B, T] the (teacher-forced) query tokens; states: [B, T, d] float32 true states (noisy
    in training). Keys/values are [true states | predicted buffer P] ([B, 2T, d], both halves at
    positions 0..T-1); P is allocated once. Step i computes only the queries at window position i
    (mask :func:`~beagle.models.beagle.masks.simulation_mask`), yields them, and, when resumed, writes their
    states into P **in place and detached**, so step i+1's queries see the draft's own states at window
    positions 1..i of their block — what a drafter appends while drafting from the block start.
    The caller may backpropagate a step's loss before resuming (the graph of step i is then freed).
    """
    batch, length = input_ids.shape
    buffer = torch.zeros_like(states)  # the predicted-state buffer P
    window_pos = window_positions(length, window, offsets)
    kv_positions = torch.arange(length, device=input_ids.device).repeat(2).expand(batch, -1)
    rows = torch.arange(batch, device=input_ids.device)[:, None]
    for step in range(1, steps + 1):
        query_positions, query_valid = _rows_where(window_pos == step)
        mask = simulation_mask(length, window, offsets, step, query_positions)
        visible_states = torch.cat([states, buffer], dim=1)
        keys, values = draft.project_states(visible_states, kv_positions)
        last = most_recent_visible(visible_states, kv_positions, mask) if draft.skip is not None else None
        hidden = draft.decode(input_ids.gather(1, query_positions), query_positions, keys, values, mask, last)
        yield SimulationStep(step, query_positions, query_valid, hidden)
        with torch.no_grad():
            target_rows = rows.expand_as(query_positions)[query_valid]
            buffer[target_rows, query_positions[query_valid]] = hidden[query_valid].detach().to(buffer.dtype)


class BeagleStage2:
    """Training-time simulation with s steps (paper §2.4, L_late with l = i, β_i = k2 − i + 1).

    Queries stay the data tokens; keys/values are [noisy true states | predicted buffer]. Step 1 is the
    block-masked forward; the step-i loss is taken on window position i only, with weight k2 − i + 1
    (normalised over the steps), where k2 is the stage-2 window.

    Stage-2 window: k2 = s by default. The paper defines L_late with s = k (every window position is
    simulated); when s < k, window positions s+1..k would get no loss at all in stage 2 while still
    shrinking the number of windows per sequence, so we tile with k2 = s and every query position gets
    trained at its own step. ``stage2_window`` overrides it (k2 ≥ s).

    Constant memory: the predicted buffer is written in place and *detached*, and each step's loss is
    backpropagated immediately (gradients accumulate over steps), so only one step's graph is alive at a
    time and peak memory does not grow with s (no new queries, one extra T-long key block). The price:
    gradients do not flow through the predicted states into earlier steps (each step trains the draft
    to predict well *given* its earlier states, the quantity acceptance depends on).
    """

    name = "beagle-stage2"

    def __init__(self, settings: ObjectiveSettings):
        self.settings = settings.resolved(ARCHITECTURE.loss_defaults)
        if self.settings.stage2_window < self.settings.sim_steps:
            raise ValueError(f"stage-2 window {self.settings.stage2_window} < "
                             f"simulation steps {self.settings.sim_steps}")
        self.num_terms = self.settings.sim_steps
        window = self.settings.stage2_window
        weights = torch.tensor([window - i + 1 for i in range(1, self.num_terms + 1)], dtype=torch.float64)
        weights[0] *= self.settings.first_position_weight  # 1: the paper's β_1 = k2
        self.weights = (weights / weights.sum()).tolist()

    def _selection(self, batch: TrainBatch):
        window = self.settings.stage2_window
        length = batch.input_ids.shape[1]
        offsets = batch.offsets(window, salt=2)
        valid = batch.position_mask & has_context(length, window, offsets)
        return offsets, valid, window_positions(length, window, offsets)

    def counts(self, batch: TrainBatch) -> torch.Tensor:
        _, valid, positions = self._selection(batch)
        return torch.stack([(valid & (positions == i)).sum() for i in range(1, self.num_terms + 1)]).cpu()

    def __call__(self, draft, batch: TrainBatch, denominators: torch.Tensor, backward: bool = True) -> ObjectiveOutput:
        settings = self.settings
        offsets, valid, _ = self._selection(batch)
        noisy = batch.noisy_states(settings.noise, settings.noise_std)
        metrics = {"loss": 0.0, "ce": 0.0, "vloss": 0.0}
        total = torch.zeros((), device=batch.input_ids.device)
        steps = simulate_drafting(draft, batch.input_ids, noisy, settings.stage2_window, offsets, settings.sim_steps)
        for out in steps:
            step, weight, count = out.step, self.weights[out.step - 1], denominators[out.step - 1]
            select = out.query_valid & valid.gather(1, out.query_positions)
            targets = batch.states.gather(1, out.query_positions[..., None].expand(-1, -1, batch.states.shape[-1]))
            loss, parts = selected_losses(draft, out.hidden, targets, select, settings)
            loss = loss.sum() * (weight / max(float(count), 1.0))
            if backward and loss.requires_grad:
                loss.backward()
            total = total + loss.detach()
            metrics["ce"] += weight * share(parts["ce"], count)
            metrics["vloss"] += weight * share(parts["vloss"], count)
            metrics[f"top1@{step}"] = share(parts["top1"], count)
        metrics["loss"] = float(total)
        return ObjectiveOutput(None if backward else total, metrics)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def simulated_acceptance(draft, batch: TrainBatch, depth: int,
                         top_k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy chain-drafting acceptance by draft position on held-out data (no noise).

    Every assistant position r with context is the root of a chain r, r+1, .., r+depth-1. Step i of a
    chain is simulated exactly as the drafter would run it, through :func:`simulate_drafting` (window =
    depth, all depth offsets so that every position is a root once); query tokens are the data tokens.
    Step i *accepts* when the draft's top-1 (over its draft vocabulary, as drafting proposes) equals the
    target's argmax at that position (``top_k`` > 1: the argmax is among the draft's top-k, the tree's
    view: a tree that expands k children of every accepted node; the chain continues on the data token). Step i is counted only while steps 1..i-1 of its chain were accepted
    **and** the data token equalled the target's argmax there (see
    :func:`~beagle.models.objective.greedy_reference`; with target-regenerated greedy data that always holds).

    Returns (accepted [depth], counted [depth]) sums; acc_i = accepted_i / counted_i.
    """
    accepted = torch.zeros(depth, dtype=torch.float64)
    counted = torch.zeros(depth, dtype=torch.float64)
    position_mask = batch.position_mask
    target_argmax, follows_data = greedy_reference(draft, batch)
    states = batch.states.float()
    length = batch.input_ids.shape[1]
    for offset in range(depth):
        offsets = torch.full((batch.input_ids.shape[0],), offset, dtype=torch.long, device=states.device)
        alive = has_context(length, depth, offsets) & position_mask  # indexed by chain root
        for out in simulate_drafting(draft, batch.input_ids, states, depth, offsets, depth):
            step, positions = out.step, out.query_positions
            roots = positions - step + 1
            live = out.query_valid & alive.gather(1, roots.clamp_min(0)) & position_mask.gather(1, positions)
            hit = draft_hits(draft, out.hidden, target_argmax.gather(1, positions), top_k, where=live)
            accepted[step - 1] += float((live & hit).sum())
            counted[step - 1] += float(live.sum())
            # Padding rows point at root 0, which is never alive (no context): writing False there is harmless.
            alive.scatter_(1, roots.clamp_min(0), live & hit & follows_data.gather(1, positions))
    return accepted, counted
