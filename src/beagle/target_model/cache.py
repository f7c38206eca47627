"""Target KV-cache bookkeeping after tree verification, and a dynamic cache that grows in place."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

GROWTH_MIN = 256  # slots a growing layer allocates at least


class GrowingDynamicLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys`` / ``values`` [B, H, S, hd] are views of a larger buffer, so a pass
    writes its T new entries in place instead of concatenating a new copy of the whole layer.

    transformers' ``DynamicLayer.update`` runs ``torch.cat([keys, new])``: every pass allocates and fills a
    new copy of each layer's keys and values. The buffer here doubles when full; every other method (crop,
    sequence length, masks) works on the views as on a plain ``DynamicLayer``. If something replaces
    ``keys`` with a tensor that is not a prefix view of the buffer, the next update copies it into a new one.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states / value_states: [B, H, T, hd] -> all keys / values [B, H, S + T, hd] (views)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.keys.shape[-2] if self.keys.numel() else 0
        needed = length + key_states.shape[-2]
        if not (_is_prefix_view(self.keys, self._key_buffer, length)
                and _is_prefix_view(self.values, self._value_buffer, length)
                and self._key_buffer.shape[-2] >= needed and self._key_buffer.shape[:2] == key_states.shape[:2]
                and self._key_buffer.shape[-1] == key_states.shape[-1]):
            self._key_buffer = _grown(self.keys, key_states, length, needed)
            self._value_buffer = _grown(self.values, value_states, length, needed)
        self._key_buffer[:, :, length:needed] = key_states
        self._value_buffer[:, :, length:needed] = value_states
        self.keys = self._key_buffer[:, :, :needed]
        self.values = self._value_buffer[:, :, :needed]
        return self.keys, self.values


def _is_prefix_view(view: torch.Tensor, buffer: torch.Tensor | None, length: int) -> bool:
    """Whether ``view`` is ``buffer[:, :, :length]`` (same storage, offset and strides)."""
    if buffer is None:
        return False
    if length == 0:
        return True
    return (view.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
            and view.storage_offset() == buffer.storage_offset() and view.stride() == buffer.stride()
            and view.shape[:2] == buffer.shape[:2] and view.shape[-1] == buffer.shape[-1])


def _grown(current: torch.Tensor, new: torch.Tensor, length: int, needed: int) -> torch.Tensor:
    """A buffer [B, H, capacity, hd] for ``needed`` entries (twice that, at least GROWTH_MIN), holding
    ``current``'s first ``length`` entries."""
    batch, heads, _, head_dim = new.shape
    capacity = max(2 * needed, GROWTH_MIN)
    buffer = new.new_zeros(batch, heads, capacity, head_dim)
    if length:
        buffer[:, :, :length] = current
    return buffer


def growing_dynamic_cache() -> DynamicCache:
    """A ``DynamicCache`` whose layers are :class:`GrowingDynamicLayer` (created on first update)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingDynamicLayer
    return cache


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
