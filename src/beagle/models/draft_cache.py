"""Inference-time draft cache: K/V of committed entries plus a per-round tree buffer.

Layout of the key/value store (one layer, batch 1)::

    [ committed entries (length) | tree entries of this round (tree_length) | free ]

Committed entries are built from *true* target states (Beagle) or from fused inputs
with true features (EAGLE-2). Tree entries are appended while drafting and dropped by
:meth:`DraftCache.reset_tree` at the end of the round, so after verification the cache
holds true entries only.

``ancestors[i, j]`` says whether node ``i`` of the current tree level sees tree entry ``j``.
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

    def commit(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append committed entries (only between rounds). keys/values: [1, KV, L, hd]."""
        assert self.tree_length == 0, "commit() inside a drafting round"
        self._write(keys, values)
        self.length += keys.shape[2]

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
