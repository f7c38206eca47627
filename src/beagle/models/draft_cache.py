"""Inference-time draft cache: K/V of committed entries plus a per-round tree buffer.

Layout of the key/value store (one layer, batch 1)::

    [ committed entries (length) | tree entries of this round (tree_length) | free ]

Committed entries are built from *true* target states (Beagle) or from fused inputs
with true features (EAGLE-2). Tree entries are appended while drafting and dropped by
:meth:`DraftCache.reset_tree` at the end of the round, so after verification the cache
holds true entries only.

``ancestors[i, j]`` says whether node ``i`` of the current tree level sees tree entry ``j``.

:class:`FastDraftCache` keeps the same interface at fixed shapes (the fast path, CUDA-graph
capturable): the committed length and the root position live in device tensors, commits are padded
to a fixed count with the real count in a tensor, the tree entries go to fixed slots after the
committed capacity, and attention always runs over the whole store with a mask.
Positions handed to the drafts come from :meth:`DraftCache.positions` (a Python int or a device
tensor, depending on the cache), so the two drafts' code is the same for both caches.
"""

from __future__ import annotations

import torch


class DraftCache:
    def __init__(self, kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype, capacity: int = 256):
        self.keys = torch.empty(1, kv_heads, capacity, head_dim, device=device, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.length = 0
        self.tree_length = 0
        self.concat = True
        # Per-round drafting state.
        self.root_position = 0
        self.level = 0
        self.level_hidden: torch.Tensor | None = None  # [n, d] hidden states of the current level
        self.ancestors = torch.zeros(1, 0, dtype=torch.bool, device=device)
        self.last_state: torch.Tensor | None = None  # [1, d] newest committed true state (Beagle's last-state skip)

    def remember_last_state(self, state: torch.Tensor) -> None:
        """state: [1, d], the newest true state committed (read by a draft with the last-state skip)."""
        self.last_state = state

    # --------------------------------------------------------------- storage
    def _reserve(self, extra: int) -> None:
        needed = self.length + self.tree_length + extra
        capacity = self.keys.shape[2]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)
        grow = new_capacity - capacity
        pad = self.keys.new_empty(self.keys.shape[0], self.keys.shape[1], grow, self.keys.shape[3])
        self.keys = torch.cat([self.keys, pad], dim=2)
        self.values = torch.cat([self.values, pad.clone()], dim=2)

    def _write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        count = keys.shape[2]
        self._reserve(count)
        start = self.length + self.tree_length
        self.keys[:, :, start : start + count] = keys
        self.values[:, :, start : start + count] = values

    def commit(self, keys: torch.Tensor, values: torch.Tensor, count=None) -> None:
        """Append committed entries (only between rounds). keys/values: [1, KV, L, hd]; ``count``: how many
        of the L are real (the fast path pads; here always L)."""
        assert self.tree_length == 0, "commit() inside a drafting round"
        self._write(keys, values)
        self.length += keys.shape[2]

    def committed_mask(self, queries: int) -> torch.Tensor | None:
        """Visibility of the committed entries for ``queries`` new queries: None = all of :meth:`visible`."""
        return None

    def positions(self, base, count: int) -> torch.Tensor:
        """[1, count] long: ``base`` (an int here) + 0..count-1."""
        return torch.arange(base, base + count, device=self.keys.device)[None]

    def same_positions(self, position, count: int) -> torch.Tensor:
        """[1, count] long, all ``position`` (the nodes of one tree level)."""
        return torch.full((1, count), position, device=self.keys.device)

    def visible(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values currently in the store: [1, KV, length + tree_length, hd]."""
        end = self.length + self.tree_length
        return self.keys[:, :, :end], self.values[:, :, :end]

    # ---------------------------------------------------------- tree rounds
    def begin_tree(self, root_position: int, root_hidden: torch.Tensor) -> None:
        """root_hidden: [1, d], the draft state at the root token (position root_position)."""
        self.tree_length = 0
        self.root_position = root_position
        self.level = 0
        self.level_hidden = root_hidden
        self.ancestors = torch.zeros(1, 0, dtype=torch.bool, device=self.keys.device)

    def add_tree_entries(self, keys: torch.Tensor, values: torch.Tensor, parents: torch.Tensor, owner: torch.Tensor) -> None:
        """Append tree entries and set the new level's visibility.

        keys/values: [1, KV, m, hd] new entries; parents: [n] index of each new node's parent in
        the previous level; owner: [n] index (into the m new entries) of the one new entry that
        node i also sees, or -1 for none.
        """
        inherited = self.ancestors[parents]  # [n, tree_length]
        self._write(keys, values)
        count = keys.shape[2]
        own = torch.zeros(parents.shape[0], count, dtype=torch.bool, device=parents.device)
        rows = torch.arange(parents.shape[0], device=parents.device)
        valid = owner >= 0
        own[rows[valid], owner[valid]] = True
        self.ancestors = torch.cat([inherited, own], dim=1)
        self.tree_length += count

    def inherit(self, parents: torch.Tensor) -> None:
        """New level without new entries: nodes see what their parents saw."""
        self.ancestors = self.ancestors[parents]

    def mask(self) -> torch.Tensor:
        """Visibility of the current level's nodes: [1, 1, n, length + tree_length] bool."""
        count = self.ancestors.shape[0]
        committed = torch.ones(count, self.length, dtype=torch.bool, device=self.keys.device)
        return torch.cat([committed, self.ancestors], dim=1)[None, None]

    def reset_tree(self) -> None:
        """Drop this round's tree entries: the store holds committed entries only."""
        self.tree_length = 0
        self.level = 0
        self.level_hidden = None
        self.ancestors = torch.zeros(1, 0, dtype=torch.bool, device=self.keys.device)


class FastDraftCache(DraftCache):
    """The draft cache at fixed shapes, for the fast path.

    Store: ``[1, KV, capacity + tree_slots, hd]``: committed entries in ``[0, capacity)`` (the first
    ``length_t`` of them real), this round's tree entries in the fixed slots after ``capacity``.
    ``length_t`` / ``root_position_t``: [1] long device tensors. ``tree_length`` and ``level`` stay
    Python ints: they depend on the tree settings only, not on the data.
    """

    def __init__(self, kv_heads: int, head_dim: int, device, dtype, capacity: int, tree_slots: int,
                 state_size: int | None = None):
        super().__init__(kv_heads, head_dim, device, dtype, capacity + tree_slots)
        if state_size is not None:  # a fixed buffer, so that the captured phases read and write one tensor
            self.last_state = torch.zeros(1, state_size, device=device, dtype=dtype)
        self.keys.zero_()
        self.values.zero_()  # hidden slots must hold finite values (0 × NaN is NaN in attention)
        self.capacity = capacity
        self.tree_slots = tree_slots
        self.length_t = torch.zeros(1, dtype=torch.long, device=device)
        self.root_position_t = torch.zeros(1, dtype=torch.long, device=device)
        self._slots = torch.arange(capacity + tree_slots, device=device)

    def clear(self) -> None:
        """Forget every committed entry (a new generation)."""
        self.length_t.zero_()
        self.reset_tree()

    def _reserve(self, extra: int) -> None:  # fixed store: nothing grows
        return

    def remember_last_state(self, state: torch.Tensor) -> None:
        if self.last_state is None:
            self.last_state = state.clone()
        else:
            self.last_state.copy_(state)

    def commit(self, keys: torch.Tensor, values: torch.Tensor, count=None) -> None:
        """Write L entries at slots ``length_t ..``; the first ``count`` ([1] tensor, default L) become
        committed. The other slots stay hidden and are overwritten by the next commit."""
        assert self.tree_length == 0, "commit() inside a drafting round"
        written = keys.shape[2]
        slots = (self.length_t + torch.arange(written, device=keys.device)).clamp(max=self.capacity - 1)
        self.keys.index_copy_(2, slots, keys)
        self.values.index_copy_(2, slots, values)
        self.length_t += written if count is None else count

    def visible(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys, self.values

    def committed_mask(self, queries: int) -> torch.Tensor:
        """[1, 1, queries, capacity + tree_slots] bool: the committed entries only."""
        return (self._slots < self.length_t)[None, None, None].expand(1, 1, queries, -1) & (
            self._slots < self.capacity)

    def begin_tree(self, root_position, root_hidden: torch.Tensor) -> None:
        """root_position: [1] long tensor; root_hidden: [1, d]."""
        self.tree_length = 0
        self.root_position_t.copy_(root_position.reshape(1))
        self.root_position = self.root_position_t
        self.level = 0
        self.level_hidden = root_hidden
        self.ancestors = torch.zeros(1, self.tree_slots, dtype=torch.bool, device=self.keys.device)

    def _write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        start = self.capacity + self.tree_length
        count = keys.shape[2]
        assert self.tree_length + count <= self.tree_slots, "tree entries exceed the static tree slots"
        self.keys[:, :, start : start + count] = keys
        self.values[:, :, start : start + count] = values

    def add_tree_entries(self, keys, values, parents, owner) -> None:
        """As :meth:`DraftCache.add_tree_entries`, into fixed slots; ``ancestors`` stays [n, tree_slots]."""
        inherited = self.ancestors[parents]  # [n, tree_slots]
        self._write(keys, values)
        count = keys.shape[2]
        columns = torch.arange(self.tree_slots, device=parents.device)
        own = (columns[None] == (self.tree_length + owner)[:, None]) & (owner >= 0)[:, None]
        self.ancestors = inherited | own
        self.tree_length += count

    def mask(self) -> torch.Tensor:
        """[1, 1, n, capacity + tree_slots] bool."""
        count = self.ancestors.shape[0]
        committed = self.committed_mask(count)[0, 0, :, : self.capacity]
        return torch.cat([committed, self.ancestors], dim=1)[None, None]

    def reset_tree(self) -> None:
        self.tree_length = 0
        self.level = 0
        self.level_hidden = None
        self.ancestors = torch.zeros(1, self.tree_slots, dtype=torch.bool, device=self.keys.device)

    def positions(self, base, count: int) -> torch.Tensor:
        """[1, count]: ``base`` ([1] tensor) + 0..count-1."""
        return (base.reshape(1, 1) + torch.arange(count, device=self.keys.device)[None])

    def same_positions(self, position, count: int) -> torch.Tensor:
        return position.reshape(1, 1).expand(1, count)
