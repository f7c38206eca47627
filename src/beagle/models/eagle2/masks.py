"""Attention masks of the EAGLE-2 baseline's training objective. True = visible."""

from __future__ import annotations

import torch


def causal_mask(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """EAGLE-2 self-attention mask [1, 1, T, T] bool (query i sees keys j ≤ i)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]


def unrolled_mask(length: int, step: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """EAGLE-3-style training-time-test mask for unrolled step ``step`` (1-based) of a self-attention
    draft: [1, 1, T, step * T] bool over the keys of steps 1..step (concatenated in that order).

    The query at sequence index q of step j continues a chain whose root is q - j + 1: it sees the
    step-1 keys up to that root (causal) and, for each later step m = 2..j, the one key of step m at
    index q - j + m (its own chain's entry; m = j is itself). Example, T = 4, step 2::

              step-1 keys | step-2 keys
        q=0:   . . . .    | x . . .       (no chain root: excluded from the loss)
        q=1:   x . . .    | . x . .
        q=2:   x x . .    | . . x .
        q=3:   x x x .    | . . . x
    """
    index = torch.arange(length, device=device)
    blocks = [index[None, :] <= (index[:, None] - step + 1)]
    for m in range(2, step + 1):
        blocks.append(index[None, :] == (index[:, None] - step + m))
    return torch.cat(blocks, dim=1)[None, None]
