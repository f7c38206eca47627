"""The training contract every draft architecture implements (its own objective lives in its package).

An objective turns a batch (tokens, assistant mask, the target's top states H) into a loss::

    counts(batch) -> [terms] int64            # loss positions per term, known before any forward
    objective(draft, batch, denominators, backward=True) -> ObjectiveOutput(loss | None, metrics)

``denominators`` are the ``counts`` summed over the *global* batch (all micro-batches and ranks), so
the per-micro-batch losses add up to the mean over the global batch whatever the split. When the
objective backpropagates itself (per step, to keep memory constant) it returns ``loss=None``; otherwise
the caller calls ``loss.backward()``. ``metrics`` are this micro-batch's shares of global means (sum them).

Indexing (all architectures): for tokens x_0..x_{T-1} with target states H_0..H_{T-1}, the draft
output at position i regresses to H_i and is trained to predict x_{i+1} (soft labels
softmax(lm_head(H_i))); position i counts when x_{i+1} is an assistant token.

An architecture registers (:mod:`beagle.models.registry`) a factory ``(stage, ObjectiveSettings) ->
objective`` and a simulated-acceptance rule ``(draft, TrainBatch, depth) -> (accepted [depth], counted
[depth])``: greedy chain drafting on held-out data, where step i of a chain *accepts* when the draft's
top-1 (:func:`draft_top1`) equals the target's argmax there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from beagle.models.losses import add_noise, position_losses
from beagle.models.settings import ObjectiveSettings


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
    # [B, T] long, filled by greedy_reference on first use (the target's argmax depends on the states only)
    target_argmax: torch.Tensor | None = None

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


def selected_losses(draft, hidden, targets, select, settings: ObjectiveSettings):
    """hidden, targets: [B, M, d]; select: [B, M] bool -> (loss [N], parts) over the selected rows."""
    return position_losses(draft, hidden[select], targets[select].float(), settings.ce_weight, settings.vloss_weight,
                           settings.loss_chunk)


def share(values: torch.Tensor, denominator) -> float:
    """This micro-batch's share of a global mean: sum(values) / denominator (a denominator of 0 counts as 1)."""
    return float(values.detach().sum()) / max(float(denominator), 1.0)


def draft_top1(draft, hidden: torch.Tensor) -> torch.Tensor:
    """The draft's greedy proposal as a target id: [..., d] -> [...] (over its draft vocabulary)."""
    return draft.to_target_ids(draft.draft_logits(hidden).argmax(dim=-1))


def draft_hits(draft, hidden: torch.Tensor, target_ids: torch.Tensor, top_k: int = 1,
               where: torch.Tensor | None = None) -> torch.Tensor:
    """[..., d] hidden, [...] target ids -> [...] bool: the target's token is among the draft's ``top_k``
    proposals there (over its draft vocabulary; ``top_k=1``: its greedy proposal, as a chain drafts).
    ``where`` ([...] bool): only those positions are scored (the LM head runs on them alone), the rest are False."""
    if where is not None:
        hits = torch.zeros(target_ids.shape, dtype=torch.bool, device=target_ids.device)
        hits[where] = draft_hits(draft, hidden[where], target_ids[where], top_k)
        return hits
    if top_k <= 1:
        return draft_top1(draft, hidden) == target_ids
    logits = draft.draft_logits(hidden)
    proposals = draft.to_target_ids(logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices)
    return (proposals == target_ids.unsqueeze(-1)).any(dim=-1)


def greedy_reference(draft, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """What simulated acceptance compares against: the target's argmax [B, T] at every position, and
    ``follows_data`` [B, T] bool: position i is trained and the data token x_{i+1} is that argmax (so the
    teacher-forced path is the one greedy drafting and verification would take there).

    The argmax is computed at trained positions only (-1 elsewhere, where nothing is counted) and kept in
    ``batch.target_argmax``: another draft of the same target, or another top-k, reuses it."""
    if batch.target_argmax is None:
        mask = batch.position_mask
        target_argmax = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
        target_argmax[mask] = draft.logits(batch.states[mask].float()).argmax(dim=-1)
        batch.target_argmax = target_argmax
    target_argmax = batch.target_argmax
    next_tokens = torch.zeros_like(batch.input_ids)
    next_tokens[:, :-1] = batch.input_ids[:, 1:]
    return target_argmax, batch.position_mask & (target_argmax == next_tokens)
