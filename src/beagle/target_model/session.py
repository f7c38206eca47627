"""One generation's target passes on the eager path: prefill, one-token steps, tree verification, keeping
the accepted path, over a transformers ``DynamicCache`` that grows by each pass's tokens.

The fast path's fixed-shape passes live in :mod:`beagle.target_model.fast_passes`.
"""

from __future__ import annotations

import torch

from beagle.target_model.cache import keep_cache_entries, tree_attention_mask


class DynamicSession:
    """Eager passes over a growing ``DynamicCache``."""

    def __init__(self, target):
        self.target = target
        self.cache = target.new_cache()
        self.length = 0

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [1, P] -> hidden [1, P, d]."""
        hidden = self.target.forward(input_ids, self.cache)
        self.length = input_ids.shape[1]
        return hidden

    def step(self, token: int) -> torch.Tensor:
        """One token at position ``length`` -> hidden [1, 1, d]."""
        hidden = self.target.forward(torch.tensor([[token]], device=self.target.device), self.cache)
        self.length += 1
        return hidden

    def verify(self, tokens: torch.Tensor, positions: torch.Tensor, ancestry: torch.Tensor) -> torch.Tensor:
        """tokens / positions: [T] (root + tree nodes), ancestry: [T, T] bool, all on the target's device
        -> hidden [1, T, d]. The entries are pending until :meth:`keep`."""
        mask = tree_attention_mask(self.length, ancestry, self.target.dtype)
        return self.target.forward(tokens[None], self.cache, positions[None], mask)

    def keep(self, keep: torch.Tensor) -> None:
        """Keep the verified entries ``keep`` ([A] indices into the last verify's tokens, ascending)."""
        keep_cache_entries(self.cache, self.length, keep)
        self.length += int(keep.shape[0])
