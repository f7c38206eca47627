"""Attention masks of Beagle's training objectives (paper §2.3–2.4). True = visible.

Both stages tile each sequence into windows ("blocks") of size ``k`` that start at a
per-sequence random offset ``ε ∈ [0, k)``::

    block(p) = floor((p + k - ε) / k)                 # positions < ε form a partial first block
    start(p) = max(0, (block(p) - 1) * k + ε)         # first position of p's block
    window position wp(p) = p - start(p) + 1          # 1-based position inside the block

Stage 1, the *inverse block mask*: query p sees true state j iff block(j) < block(p),
i.e. only true states before its block start. Example, T = 8, k = 3, ε = 1
(blocks: [0] [1 2 3] [4 5 6] [7]; rows = queries, columns = keys)::

          j: 0 1 2 3 4 5 6 7
      p=0:   . . . . . . . .      partial first block: no visible key (never in the loss)
      p=1:   x . . . . . . .      wp 1: the ordinary next-token prediction
      p=2:   x . . . . . . .      wp 2: two steps ahead (state 1 hidden)
      p=3:   x . . . . . . .      wp 3: three steps ahead
      p=4:   x x x x . . . .
      p=5:   x x x x . . . .
      p=6:   x x x x . . . .
      p=7:   x x x x x x x .

Stage 2, step i over keys ``[true states (T) | predicted buffer (T)]``: the query at window
position wp sees the true states before its block start, plus the *predicted* states of
its own block at window positions 1 .. min(wp, i) - 1 (the true states there stay hidden).
Example, same tiling, step i = 3 (buffer columns are primed)::

          j: 0 1 2 3 4 5 6 7 | 0' 1' 2' 3' 4' 5' 6' 7'
      p=1:   x . . . . . . . | .  .  .  .  .  .  .  .      wp 1
      p=2:   x . . . . . . . | .  x  .  .  .  .  .  .      wp 2 sees its block's predicted 1'
      p=3:   x . . . . . . . | .  x  x  .  .  .  .  .      wp 3 sees 1', 2' (trained at step 3)
      p=5:   x x x x . . . . | .  .  .  .  x  .  .  .
      p=6:   x x x x . . . . | .  .  .  .  x  x  .  .

At step i the buffer holds, at each block's window positions 1..i-1, the draft states
written by steps 1..i-1 — exactly the states a drafter would have appended while drafting
i-1 tokens from the block start.
"""

from __future__ import annotations

import torch


def block_index(positions: torch.Tensor, window: int, offsets: torch.Tensor) -> torch.Tensor:
    """positions: [..., T] or [T]; offsets: [B] -> block ids [B, T] (long)."""
    positions = positions.expand(offsets.shape[0], -1) if positions.dim() == 1 else positions
    return torch.div(positions + window - offsets[:, None], window, rounding_mode="floor")


def block_start(positions: torch.Tensor, window: int, offsets: torch.Tensor) -> torch.Tensor:
    """First position of each position's block: [B, T] (long), clipped at 0 for the partial first block."""
    blocks = block_index(positions, window, offsets)
    return ((blocks - 1) * window + offsets[:, None]).clamp_min(0)


def window_positions(length: int, window: int, offsets: torch.Tensor) -> torch.Tensor:
    """1-based position of every sequence position inside its block: [B, T] (long, 1..window).

    Example: length 8, window 3, offset 1 -> [1, 1, 2, 3, 1, 2, 3, 1].
    """
    positions = torch.arange(length, device=offsets.device)
    return positions - block_start(positions, window, offsets) + 1


def has_context(length: int, window: int, offsets: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the query sees at least one true state (its block starts after position 0)."""
    positions = torch.arange(length, device=offsets.device)
    return block_start(positions, window, offsets) > 0


def inverse_block_mask(length: int, window: int, offsets: torch.Tensor) -> torch.Tensor:
    """Stage-1 mask [B, 1, T, T] bool: query p sees key j iff block(j) < block(p).

    offsets: [B] long in [0, window). Rows of the partial first block are all False.
    """
    positions = torch.arange(length, device=offsets.device)
    blocks = block_index(positions, window, offsets)  # [B, T]
    return (blocks[:, None, :] < blocks[:, :, None])[:, None]


def simulation_mask(
    length: int,
    window: int,
    offsets: torch.Tensor,
    step: int,
    query_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stage-2 mask for simulation step ``step`` (1-based) over [true states | predicted buffer].

    Returns [B, 1, Q, 2T] bool, Q = T, or Q = query_positions.shape[1] when only some query rows are
    needed (query_positions: [B, Q] long). Query p sees true state j iff j < start(p), and buffer
    entry j iff j is in p's block with wp(j) < min(wp(p), step) (positions start..start+min(wp,step)-2).
    """
    device = offsets.device
    keys = torch.arange(length, device=device)
    key_blocks = block_index(keys, window, offsets)  # [B, T]
    key_wp = keys - block_start(keys, window, offsets) + 1  # [B, T]
    if query_positions is None:
        query_positions = keys.expand(offsets.shape[0], -1)
    query_blocks = block_index(query_positions, window, offsets)  # [B, Q]
    query_wp = query_positions - block_start(query_positions, window, offsets) + 1
    true_part = key_blocks[:, None, :] < query_blocks[:, :, None]  # [B, Q, T]
    limit = query_wp.clamp_max(step)  # min(wp, step)
    predicted_part = (key_blocks[:, None, :] == query_blocks[:, :, None]) & (key_wp[:, None, :] < limit[:, :, None])
    return torch.cat([true_part, predicted_part], dim=-1)[:, None]


def most_recent_visible(states: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """For each query, the visible state of the largest position (zeros where a query sees none).

    states: [B, S, d]; positions: [B, S] long; mask: [B, 1, T, S] bool (True = visible). Returns [B, T, d].
    In Beagle's training masks no two visible keys of a query share a position (a position is seen either as
    its true state or as its predicted one), so the choice is unique.
    """
    score = torch.where(mask[:, 0], positions[:, None, :], -1)  # [B, T, S]
    best, index = score.max(dim=-1)  # [B, T]
    picked = states.gather(1, index[..., None].expand(-1, -1, states.shape[-1]))
    return picked * (best >= 0)[..., None].to(picked.dtype)
