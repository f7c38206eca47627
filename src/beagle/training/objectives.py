"""Training objectives of both draft architectures behind one interface.

An objective turns a batch (tokens, assistant mask, the target's top states H) into a loss::

    counts(batch) -> [terms] int64            # loss positions per term, known before any forward
    objective(draft, batch, denominators, backward=True) -> ObjectiveOutput(loss | None, metrics)

``denominators`` are the ``counts`` summed over the *global* batch (all micro-batches and ranks), so
the per-micro-batch losses add up to the mean over the global batch whatever the split. When the
objective backpropagates itself (Beagle stage 2, per step) it returns ``loss=None``; otherwise the
caller calls ``loss.backward()``. ``metrics`` are this micro-batch's shares of global means (sum them).

Indexing (all architectures): for tokens x_0..x_{T-1} with target states H_0..H_{T-1}, the draft
output at position i regresses to H_i and is trained to predict x_{i+1} (soft labels
softmax(lm_head(H_i))); position i counts when x_{i+1} is an assistant token.

- :class:`BeagleStage1`: one forward with the inverse block mask; every position with a visible
  state counts equally (L_early, paper Eq. 4).
- :class:`BeagleStage2`: training-time simulation (paper §2.4), constant memory.
- :class:`Eagle2Objective`: EAGLE-2 (causal self-attention) and, with ``steps > 1``, the EAGLE-3-style
  training-time test that appends queries and keys per unrolled step (memory grows with steps).

:func:`simulated_acceptance` measures per-depth greedy acceptance on held-out data for both drafts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from beagle.training.losses import add_noise, position_losses
from beagle.training.masks import (
    has_context,
    inverse_block_mask,
    simulation_mask,
    unrolled_mask,
    window_positions,
)

DEFAULT_WEIGHTS = {"beagle": (1.0, 10.0), "eagle2": (0.1, 1.0)}  # (ce_weight, vloss_weight)
DEFAULT_NOISE = {"beagle": "gaussian", "eagle2": "uniform"}


@dataclass
class ObjectiveSettings:
    """window: stage-1 block size k. sim_steps: stage-2 simulated steps s. stage2_window: stage-2 block
    size (default s: see :class:`BeagleStage2`). ttt_steps: EAGLE-2 unrolled steps (1 = plain EAGLE-2).
    ce_weight / vloss_weight / noise default per architecture (Beagle 1 / 10 / gaussian; EAGLE-2
    0.1 / 1 / uniform); noise_std 0.2. ttt_decay: EAGLE-3's per-step loss decay. loss_chunk: rows per
    checkpointed chunk of the LM-head losses (None: all at once; see :func:`position_losses`)."""

    window: int = 5
    sim_steps: int = 4
    stage2_window: int | None = None
    ttt_steps: int = 1
    ce_weight: float | None = None
    vloss_weight: float | None = None
    noise: str | None = None
    noise_std: float = 0.2
    ttt_decay: float = 0.8
    loss_chunk: int | None = None

    def resolved(self, arch: str) -> "ObjectiveSettings":
        ce, vloss = DEFAULT_WEIGHTS[arch]
        return ObjectiveSettings(
            window=self.window,
            sim_steps=self.sim_steps,
            stage2_window=self.stage2_window or self.sim_steps,
            ttt_steps=max(1, self.ttt_steps),
            ce_weight=ce if self.ce_weight is None else self.ce_weight,
            vloss_weight=vloss if self.vloss_weight is None else self.vloss_weight,
            noise=self.noise or DEFAULT_NOISE[arch],
            noise_std=self.noise_std,
            ttt_decay=self.ttt_decay,
            loss_chunk=self.loss_chunk,
        )


@dataclass
class TrainBatch:
    """A right-padded micro-batch.

    input_ids [B, T] long; attention_mask [B, T] bool; loss_mask [B, T] bool (assistant tokens);
    lengths [B] long; states [B, T, d] target top states (any float dtype; None until computed online);
    seeds [B] int64, one per sequence, from which its noise and window offsets are drawn (independent
    of batch composition).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    lengths: torch.Tensor
    states: torch.Tensor | None
    seeds: torch.Tensor

    def to(self, device) -> "TrainBatch":
        return TrainBatch(*(None if getattr(self, name) is None else getattr(self, name).to(device)
                            for name in self.__dataclass_fields__))

    @property
    def position_mask(self) -> torch.Tensor:
        """[B, T] bool: position i is trained (token i+1 exists and is an assistant token)."""
        shifted = torch.zeros_like(self.loss_mask)
        shifted[:, :-1] = self.loss_mask[:, 1:]
        positions = torch.arange(self.loss_mask.shape[1], device=self.loss_mask.device)
        return shifted & (positions[None] + 1 < self.lengths[:, None])

    def offsets(self, window: int, salt: int = 0) -> torch.Tensor:
        """Per-sequence window offsets ε ∈ [0, window): [B] long."""
        values = [random.Random(int(seed) * 1_000_003 + window * 7919 + salt).randrange(window)
                  for seed in self.seeds.tolist()]
        return torch.tensor(values, dtype=torch.long, device=self.input_ids.device)

    def noisy_states(self, kind: str, std: float) -> torch.Tensor:
        """Float32 states [B, T, d] with per-sequence noise."""
        return add_noise(self.states.float(), self.lengths, self.seeds, kind, std)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)


def _selected_losses(draft, hidden, targets, select, settings):
    """hidden, targets: [B, M, d]; select: [B, M] bool -> (loss [N], parts) over the selected rows."""
    return position_losses(draft, hidden[select], targets[select].float(), settings.ce_weight, settings.vloss_weight,
                           settings.loss_chunk)


def _share(values: torch.Tensor, denominator) -> float:
    return float(values.detach().sum()) / max(float(denominator), 1.0)


# --------------------------------------------------------------------------- Beagle stage 1


class BeagleStage1:
    """Multi-token prediction with the inverse block mask (window k, random offset per sequence).

    One forward over [B, T] queries and the noisy true states; the query at window position i is an
    i-step-ahead prediction. Terms = window positions 1..k (for per-position metrics); the loss is the
    plain mean over all of them: every trained position counts equally.
    """

    name = "beagle-stage1"

    def __init__(self, settings: ObjectiveSettings):
        self.settings = settings.resolved("beagle")
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
        loss, parts = _selected_losses(draft, hidden, batch.states, valid, settings)
        total = float(denominators.sum())
        loss = loss.sum() / max(total, 1.0)
        metrics = {"loss": float(loss.detach()), "ce": _share(parts["ce"], total),
                   "vloss": _share(parts["vloss"], total), "top1": _share(parts["top1"], total)}
        selected_positions = positions[valid]
        for i in range(1, self.num_terms + 1):
            metrics[f"top1@{i}"] = _share(parts["top1"][selected_positions == i], denominators[i - 1])
        return ObjectiveOutput(loss, metrics)


# --------------------------------------------------------------------------- Beagle stage 2


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
    (mask :func:`~beagle.training.masks.simulation_mask`), yields them, and, when resumed, writes their
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
        keys, values = draft.project_states(torch.cat([states, buffer], dim=1), kv_positions)
        hidden = draft.decode(input_ids.gather(1, query_positions), query_positions, keys, values, mask)
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
        self.settings = settings.resolved("beagle")
        if self.settings.stage2_window < self.settings.sim_steps:
            raise ValueError(f"stage-2 window {self.settings.stage2_window} < "
                             f"simulation steps {self.settings.sim_steps}")
        self.num_terms = self.settings.sim_steps
        window = self.settings.stage2_window
        weights = torch.tensor([window - i + 1 for i in range(1, self.num_terms + 1)], dtype=torch.float64)
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
            loss, parts = _selected_losses(draft, out.hidden, targets, select, settings)
            loss = loss.sum() * (weight / max(float(count), 1.0))
            if backward and loss.requires_grad:
                loss.backward()
            total = total + loss.detach()
            metrics["ce"] += weight * _share(parts["ce"], count)
            metrics["vloss"] += weight * _share(parts["vloss"], count)
            metrics[f"top1@{step}"] = _share(parts["top1"], count)
        metrics["loss"] = float(total)
        return ObjectiveOutput(None if backward else total, metrics)


# --------------------------------------------------------------------------- EAGLE-2 (+ TTT)


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
        self.settings = settings.resolved("eagle2")
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
            loss, parts = _selected_losses(draft, features, targets, self._valid(batch, step), settings)
            loss = loss.sum() * (weight / max(float(count), 1.0))
            total = loss if total is None else total + loss
            metrics["ce"] += weight * _share(parts["ce"], count)
            metrics["vloss"] += weight * _share(parts["vloss"], count)
            metrics[f"top1@{step}"] = _share(parts["top1"], count)
        metrics["loss"] = float(total.detach())
        if self.num_terms == 1:
            metrics["top1"] = metrics["top1@1"]
        return ObjectiveOutput(total, metrics)


def make_objective(arch: str, stage: int, settings: ObjectiveSettings):
    """The objective of ``arch`` for training stage 1 or 2 (EAGLE-2 ignores the stage)."""
    if arch == "eagle2":
        return Eagle2Objective(settings)
    if arch == "beagle":
        return BeagleStage1(settings) if stage == 1 else BeagleStage2(settings)
    raise ValueError(f"unknown draft architecture {arch!r}")


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def simulated_acceptance(draft, batch: TrainBatch, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy chain-drafting acceptance by draft position on held-out data (no noise).

    Every assistant position r with context is the root of a chain r, r+1, .., r+depth-1. Step i of a
    chain is simulated exactly as the drafter would run it: Beagle through :func:`simulate_drafting`
    (window = depth, all depth offsets so that every position is a root once), EAGLE-2 through
    :func:`eagle_unroll`; query tokens are the data tokens. Step i *accepts* when the draft's top-1 (over its
    draft vocabulary, as drafting proposes) equals the target's argmax at that position. Step i is counted only while steps 1..i-1 of its chain were
    accepted **and** the data token equalled the target's argmax there (so the teacher-forced path is the
    one greedy drafting and verification would take; with target-regenerated greedy data that always holds).

    Returns (accepted [depth], counted [depth]) sums; acc_i = accepted_i / counted_i and the simulated
    mean acceptance length τ = 1 + Σ_k Π_{i≤k} acc_i (see :func:`simulated_tau`).
    """
    accepted = torch.zeros(depth, dtype=torch.float64)
    counted = torch.zeros(depth, dtype=torch.float64)
    position_mask = batch.position_mask
    target_argmax = draft.logits(batch.states.float()).argmax(dim=-1)  # [B, T]
    next_tokens = torch.zeros_like(batch.input_ids)
    next_tokens[:, :-1] = batch.input_ids[:, 1:]
    follows_data = position_mask & (target_argmax == next_tokens)
    states = batch.states.float()
    length = batch.input_ids.shape[1]
    if draft.arch == "beagle":
        for offset in range(depth):
            offsets = torch.full((batch.input_ids.shape[0],), offset, dtype=torch.long, device=states.device)
            alive = has_context(length, depth, offsets) & position_mask  # indexed by chain root
            for out in simulate_drafting(draft, batch.input_ids, states, depth, offsets, depth):
                step, positions = out.step, out.query_positions
                roots = positions - step + 1
                live = out.query_valid & alive.gather(1, roots.clamp_min(0)) & position_mask.gather(1, positions)
                hit = _draft_top1(draft, out.hidden) == target_argmax.gather(1, positions)
                accepted[step - 1] += float((live & hit).sum())
                counted[step - 1] += float(live.sum())
                # Padding rows point at root 0, which is never alive (no context): writing False there is harmless.
                alive.scatter_(1, roots.clamp_min(0), live & hit & follows_data.gather(1, positions))
    else:
        alive = position_mask[:, 1:].clone()  # chain root index r (position r+1)
        for step, features in enumerate(eagle_unroll(draft, batch.input_ids, states, depth), start=1):
            count = features.shape[1]
            shift = step - 1
            if shift >= count:
                break
            index = torch.arange(shift, count, device=states.device)  # q; root r = q - shift
            live = alive[:, : count - shift] & position_mask[:, 1:][:, index]
            hit = _draft_top1(draft, features[:, index]) == target_argmax[:, 1:][:, index]
            accepted[step - 1] += float((live & hit).sum())
            counted[step - 1] += float(live.sum())
            alive[:, : count - shift] = live & hit & follows_data[:, 1:][:, index]
    return accepted, counted


def _draft_top1(draft, hidden: torch.Tensor) -> torch.Tensor:
    """The draft's greedy proposal as a target id: [..., d] -> [...] (over its draft vocabulary)."""
    return draft.to_target_ids(draft.draft_logits(hidden).argmax(dim=-1))


def simulated_tau(accepted: torch.Tensor, counted: torch.Tensor) -> tuple[list[float], float]:
    """Per-position acceptance rates and τ = 1 + Σ_k Π_{i≤k} acc_i."""
    rates = (accepted / counted.clamp_min(1)).tolist()
    tau, running = 1.0, 1.0
    for rate in rates:
        running *= rate
        tau += running
    return rates, tau


# --------------------------------------------------------------------------- memory measurement


def peak_saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Peak bytes of tensors held by autograd graphs (saved for backward) while ``fn()`` runs.

    Counts each storage once while any graph holds it and stops counting it when the graph that saved
    it is freed (after backward). Tensors sharing storage with ``exclude`` (parameters, which live
    anyway) are not counted. Deterministic on CPU: a memory measure for comparing objectives.
    """
    excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
    live: dict[int, list[int]] = {}
    tally = {"current": 0, "peak": 0}

    class Saved:
        __slots__ = ("tensor", "key")

        def __init__(self, tensor):
            self.tensor = tensor
            self.key = tensor.untyped_storage().data_ptr()
            if self.key in excluded:
                self.key = None
                return
            entry = live.setdefault(self.key, [0, tensor.untyped_storage().nbytes()])
            if entry[0] == 0:
                tally["current"] += entry[1]
                tally["peak"] = max(tally["peak"], tally["current"])
            entry[0] += 1

        def __del__(self):
            if self.key is None:
                return
            entry = live[self.key]
            entry[0] -= 1
            if entry[0] == 0:
                tally["current"] -= entry[1]
                del live[self.key]

    with torch.autograd.graph.saved_tensors_hooks(Saved, lambda saved: saved.tensor):
        fn()
    return tally["peak"]
