"""Losses and input noise shared by the training objectives.

Per selected position n (rows of [N, ...] tensors)::

    ce_n    = -Σ_v p_n(v) log q_n(v)          # soft CE against the target distribution (EAGLE's "ploss")
    vloss_n = mean_d SmoothL1(h_n, H_n)        # feature regression to the target's top state
    loss_n  = ce_weight * ce_n + vloss_weight * vloss_n

The weights are the architecture's (its registration's ``loss_defaults``, :mod:`beagle.models.registry`).

With a draft vocabulary S (N kept ids, :mod:`beagle.vocab`) the draft's q_n is a softmax over S only, and
the soft label is the target's distribution restricted to S and renormalised (as EAGLE-3)::

    p^S_n(v) = p_n(v) / m_n  for v in S,     m_n = Σ_{v∈S} p_n(v)  (the target's mass inside S)
    ce_n     = -m_n · Σ_{v∈S} p^S_n(v) log q_n(v)

Labels outside S: their probability mass is dropped from the label, and the position's CE is weighted by
m_n — a position whose target mass lies outside S (e.g. its argmax is an out-of-vocabulary token, which
no proposal from S can match) counts in proportion to what the draft can still win there, down to 0 when
m_n ≈ 0 (no division by a vanishing mass: p^S is a softmax over the restricted logits). Without a draft
vocabulary m_n = 1 and nothing changes. The feature regression vloss is unchanged at every position; top1
compares the draft's argmax over S, mapped to a target id, with the target's argmax over all of V.
Objectives sum ``weight_n * loss_n`` and divide by a count of positions over the *global* batch, so
micro-batches and data-parallel ranks add up to the single-batch mean.

Noise is drawn per sequence from its own seed (not the global RNG): the noise a sequence gets does not
depend on how the batch is split over micro-batches or ranks, or on padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NOISE_KINDS = ("gaussian", "uniform", "none")


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """logits: [N, V] draft logits; target_probs: [N, V] target distribution -> [N] float32."""
    return -(target_probs * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def feature_regression(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SmoothL1 (beta 1) averaged over the feature dim: [N, d], [N, d] -> [N] float32."""
    return F.smooth_l1_loss(predicted.float(), target.float(), reduction="none").mean(dim=-1)


def position_losses(
    draft,
    hidden: torch.Tensor,
    target_states: torch.Tensor,
    ce_weight: float,
    vloss_weight: float,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Losses of N selected positions.

    hidden: [N, d] draft states (with grad); target_states: [N, d] the target's top states H at the
    same positions (their LM-head distribution is the soft label, computed here without grad).
    chunk_rows: when set and N is larger, rows are processed in chunks under activation checkpointing,
    so only one chunk's [rows, V] logits live at a time (recomputed in backward: less memory, one
    more LM-head product). Values are the same either way (rows are independent).
    With a draft vocabulary the CE is over it (see the module docstring).
    Returns (loss [N], parts {"ce": [N], "vloss": [N], "top1": [N] float 0/1 draft argmax == target argmax}).
    """
    if chunk_rows and hidden.shape[0] > chunk_rows and torch.is_grad_enabled() and hidden.requires_grad:
        from torch.utils.checkpoint import checkpoint

        pieces = [
            checkpoint(_row_losses, draft, rows, targets, ce_weight, vloss_weight, use_reentrant=False)
            for rows, targets in zip(hidden.split(chunk_rows), target_states.split(chunk_rows))
        ]
        loss, ce, vloss, top1 = (torch.cat(parts) for parts in zip(*pieces))
    else:
        loss, ce, vloss, top1 = _row_losses(draft, hidden, target_states, ce_weight, vloss_weight)
    return loss, {"ce": ce.detach(), "vloss": vloss.detach(), "top1": top1.detach()}


def _row_losses(draft, hidden, target_states, ce_weight, vloss_weight):
    with torch.no_grad():
        target_logits = draft.logits(target_states)  # [N, V]
        target_top = target_logits.argmax(dim=-1)
        restricted = draft.to_draft_vocab(target_logits)  # [N, N_S] (the same tensor without a draft vocabulary)
        target_probs = restricted.softmax(dim=-1)  # restricted to the draft vocabulary and renormalised
        inside = None
        if draft.vocab is not None:  # m_n: the target's probability mass inside the draft vocabulary
            inside = (restricted.logsumexp(dim=-1) - target_logits.logsumexp(dim=-1)).exp()
        del target_logits, restricted
    logits = draft.draft_logits(hidden)  # [N, N_S]
    ce = soft_cross_entropy(logits, target_probs)
    if inside is not None:
        ce = ce * inside
    vloss = feature_regression(hidden, target_states)
    with torch.no_grad():
        top1 = (draft.to_target_ids(logits.argmax(dim=-1)) == target_top).float()
    return ce_weight * ce + vloss_weight * vloss, ce, vloss, top1


def sequence_noise(
    shape: tuple[int, int],
    seed: int,
    kind: str,
    std: float,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Noise for one sequence: [L, d] from its own generator.

    gaussian: N(0, std²) (Beagle, paper §2.2). uniform: U(-a, a) with a = std·√3, i.e. standard
    deviation ``std`` (EAGLE's "uniform noise, std 0.2"; EAGLE's code additionally rescales by
    512 / length, which we do not). none: zeros.
    """
    if kind == "none" or std == 0:
        return torch.zeros(shape, device=device, dtype=dtype)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed) % (2**63 - 1))
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype) * std
    if kind == "uniform":
        half_width = std * math.sqrt(3.0)
        return (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2 - 1) * half_width
    raise ValueError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS}")


def add_noise(states: torch.Tensor, lengths: torch.Tensor, seeds: torch.Tensor, kind: str, std: float) -> torch.Tensor:
    """states: [B, T, d] (float32); lengths, seeds: [B] -> noisy copy [B, T, d]; padding stays untouched."""
    if kind == "none" or std == 0:
        return states
    noisy = states.clone()
    for row, (length, seed) in enumerate(zip(lengths.tolist(), seeds.tolist())):
        noisy[row, :length] += sequence_noise((length, states.shape[-1]), seed, kind, std, states.device, states.dtype)
    return noisy
