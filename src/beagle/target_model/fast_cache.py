"""A fixed-capacity target KV cache whose writes go to positions held in a tensor (CUDA-graph friendly).

Layout: one store ``[L, 2, 1, KV, capacity, hd]`` for all layers (allocated on the first write and never
reallocated, so addresses stay fixed); layer l's keys / values are the views ``store[l, 0]`` / ``store[l, 1]``
(``[1, KV, capacity, hd]``). One tensor lets the fast path move accepted entries of every layer with one
gather and one scatter (:meth:`~beagle.target_model.fast_passes.FastTargetPasses.keep`). A forward writes its T new entries at ``cache.write_positions``
([T] long, set by the caller; a captured CUDA graph keeps reading the tensor it was captured with) and
attends over all ``capacity`` slots: the caller's 4-D additive mask hides the slots that are not (yet)
part of the sequence. Stale slots hold finite values from earlier writes (or zeros), so a hidden slot
contributes exactly 0 to attention.

It is a ``transformers`` ``Cache`` (HF attention calls ``cache.update(k, v, layer_idx, ...)``); the layer
class implements the abstract methods of every transformers 5.x release (their names moved).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _FastLayer(CacheLayerMixin):
    is_compileable = True
    is_sliding = False
    is_croppable = False

    def __init__(self, owner: "FastKVCache", index: int):
        super().__init__()
        self.owner = owner
        self.index = index
        self.keys = None
        self.values = None
        self.is_initialized = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
        value_states = key_states if value_states is None else value_states
        store = self.owner.allocate(key_states, value_states)
        self.keys, self.values = store[self.index, 0], store[self.index, 1]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states / value_states: [1, KV, T, hd] written at ``owner.write_positions`` [T]; returns the
        whole store [1, KV, capacity, hd] (the mask decides what is visible)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        positions = self.owner.write_positions
        self.keys.index_copy_(2, positions, key_states)
        self.values.index_copy_(2, positions, value_states)
        return self.keys, self.values

    # The sizes HF asks for when it builds masks itself (it does not: Beagle passes 4-D masks).
    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.owner.capacity, 0

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.owner.length

    def get_max_cache_shape(self, *args, **kwargs) -> int:
        return self.owner.capacity

    def get_max_length(self, *args, **kwargs) -> int:
        return self.owner.capacity


class FastKVCache(Cache):
    """capacity slots for ``num_layers`` layers. ``length``: the entries that belong to the sequence
    (kept by the caller); ``write_positions``: [T] long slots of the next forward's T entries."""

    def __init__(self, num_layers: int, capacity: int, device: torch.device):
        self.capacity = int(capacity)
        self.length = 0
        self.write_positions = torch.zeros(1, dtype=torch.long, device=device)
        self.store: torch.Tensor | None = None  # [L, 2, 1, KV, capacity, hd], on the first write
        super().__init__(layers=[_FastLayer(self, index) for index in range(num_layers)])

    def allocate(self, key_states: torch.Tensor, value_states: torch.Tensor) -> torch.Tensor:
        """The store for every layer, shaped from the first layer's first write ([1, KV, T, hd] each)."""
        if self.store is None:
            if key_states.shape != value_states.shape or key_states.dtype != value_states.dtype:
                raise ValueError("the static cache needs keys and values of one shape and dtype, got "
                                 f"{tuple(key_states.shape)} / {tuple(value_states.shape)}")
            batch, heads, _, size = key_states.shape
            self.store = torch.zeros(len(self.layers), 2, batch, heads, self.capacity, size,
                                     dtype=key_states.dtype, device=key_states.device)
        return self.store
