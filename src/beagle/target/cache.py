"""Target KV-cache bookkeeping after tree verification."""

from __future__ import annotations

import torch


def keep_cache_entries(cache, start: int, keep: torch.Tensor) -> None:
    """Keep, after the first ``start`` entries, only tree entries ``keep`` (indices relative to
    ``start``, ascending), moved to be contiguous; everything after is dropped.

    keep: [A] long. Works on any transformers cache whose layers hold ``keys``/``values``
    [B, H, S, hd] tensors (DynamicCache in transformers 5.x).
    """
    count = int(keep.shape[0])
    for layer in cache.layers:
        move_entries(layer, start, keep)
        # Slice instead of ``cache.crop``: its argument changed meaning across transformers 5.x.
        layer.keys = layer.keys[:, :, : start + count]
        layer.values = layer.values[:, :, : start + count]


def move_entries(layer, start: int, keep: torch.Tensor) -> None:
    """In one cache layer (``keys`` / ``values`` [B, H, S, hd]), copy entries ``start + keep`` to
    ``start .. start + len(keep) - 1`` (the source is gathered first, so overlapping moves are safe)."""
    source = keep.to(layer.keys.device) + start
    end = start + int(keep.shape[0])
    layer.keys[:, :, start:end] = layer.keys[:, :, source]
    layer.values[:, :, start:end] = layer.values[:, :, source]


def tree_attention_mask(prefix_length: int, ancestry: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask for a verification pass: the prefix is visible to all tree tokens and each
    tree token sees its ancestors and itself. ancestry: [T, T] bool -> [1, 1, T, prefix + T]."""
    count = ancestry.shape[0]
    visible = torch.cat(
        [torch.ones(count, prefix_length, dtype=torch.bool, device=ancestry.device), ancestry], dim=1
    )
    mask = torch.zeros(visible.shape, dtype=dtype, device=ancestry.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None]
