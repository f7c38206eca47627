"""Beagle draft: one cross-attention block (paper §1, Eq. 1–2).

    y_n = CrossAttn(Q from e(t_n); K, V from states h_j, j < n) + e(t_n)     # residual on the embedding
    h_n = MLP(y_n) + y_n                                                     # draft state, predicts t_{n+1}

Queries come from the token embedding, keys/values from *states*: the target's true top
states, or (while drafting) the draft's own states along the node's ancestry. The
diagonal is masked too (query n sees states j < n). Pre-RMSNorm on each input stream
and before the MLP, RoPE at each side's own positions, GQA as in the target. No fusion
layer, no self-attention, no final norm (the target's LM head reads h_n directly).

Last-state skip (``DraftConfig.last_state_skip``, ``beagle train --last-state-skip``; beyond the paper)::

    y_n = CrossAttn(...) + e(t_n) + W_s · norm_s(h_last(n))

where h_last(n) is the most recent state query n sees (the largest position among its visible keys: the
true state h_{n-1} for a root, the parent's draft state for a tree node, or the last true state without
concat). With GQA the cross-attention reads a state only through its KV·hd value dimensions (192 of 576 for
SmolLM2); the skip adds a full-width path for the one state the heads weigh most. W_s starts at zero, so
enabling it on a trained draft (:meth:`BeagleDraft.enable_last_state_skip`) changes nothing until trained.
"""

from __future__ import annotations

import torch

from beagle.models.base import DraftModel
from beagle.models.beagle import ARCHITECTURE
from beagle.models.beagle.masks import most_recent_visible
from beagle.models.config import DraftConfig
from beagle.models.layers import Attention, RMSNorm, RotaryEmbedding, SwiGLU
from beagle.models.params import layer_parameter_count


class BeagleDraft(DraftModel):
    arch = ARCHITECTURE.name
    fsdp_methods = ("project_states", "decode")

    def __init__(self, config: DraftConfig):
        super().__init__(config)
        size, eps = config.hidden_size, config.rms_norm_eps
        self.query_norm = RMSNorm(size, eps)
        self.state_norm = RMSNorm(size, eps)
        self.cross_attn = Attention(config)
        self.mlp_norm = RMSNorm(size, eps)
        self.mlp = SwiGLU(config)
        self.rotary = RotaryEmbedding(config)
        self.skip_norm = self.skip = None
        if config.last_state_skip:
            self._add_skip()

    def _add_skip(self) -> None:
        size = self.config.hidden_size
        self.skip_norm = RMSNorm(size, self.config.rms_norm_eps)
        self.skip = torch.nn.Linear(size, size, bias=False)
        torch.nn.init.zeros_(self.skip.weight)

    def zero_initialised(self) -> list[torch.nn.Linear]:
        return [self.skip] if self.skip is not None else []

    def enable_last_state_skip(self) -> "BeagleDraft":
        """Add the last-state skip (zero weights: outputs unchanged) to a draft built or trained without it."""
        if self.skip is None:
            self.config.last_state_skip = True
            self._add_skip()
            self.skip_norm.to(device=self.query_norm.weight.device, dtype=self.query_norm.weight.dtype)
            self.skip.to(device=self.query_norm.weight.device, dtype=self.query_norm.weight.dtype)
        return self

    @classmethod
    def parameter_count(cls, config: DraftConfig) -> int:
        """Attention (q, k, v, o) + SwiGLU + 3 norms (query, state and MLP) [+ the skip's d² + d]."""
        skip = config.hidden_size ** 2 + config.hidden_size if config.last_state_skip else 0
        return layer_parameter_count(config) + 3 * config.hidden_size + skip

    # ------------------------------------------------------------- Eq. 1–2
    def project_states(self, states: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K_j = norm(h_j) W_K (rotated at position j), V_j = norm(h_j) W_V.

        states: [B, S, d]; positions: [B, S] -> keys, values: [B, KV, S, hd].
        """
        states = states.to(self.dtype)
        return self.cross_attn.project_kv(self.state_norm(states), self.rotary(positions, states.dtype))

    def decode(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
        last_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draft states of query tokens. token_ids/positions: [B, T]; keys/values: [B, KV, S, hd];
        mask: [B or 1, 1, T, S] bool (True = visible) or None (all visible); last_states: [B, T, d], the most
        recent state each query sees (read only with the last-state skip; zeros for a query that sees none).
        Returns [B, T, d]."""
        embedded = self.embed_tokens(token_ids)
        rope = self.rotary(positions, embedded.dtype)
        attended = self.cross_attn(self.query_norm(embedded), rope, keys, values, mask) + embedded
        if self.skip is not None:
            if last_states is None:
                raise ValueError("a draft with the last-state skip needs last_states")
            attended = attended + self.skip(self.skip_norm(last_states.to(attended.dtype)))
        return self.mlp(self.mlp_norm(attended)) + attended

    def forward(self, token_ids: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Training forward over one sequence batch. token_ids: [B, T]; states: [B, S, d] at
        positions 0..S-1 (S = T, or 2T with a predicted-state buffer at positions 0..T-1 again);
        mask: [B, 1, T, S] bool. Returns draft states [B, T, d]."""
        batch, length = token_ids.shape
        positions = torch.arange(length, device=token_ids.device).expand(batch, length)
        state_positions = positions.repeat(1, states.shape[1] // length)
        keys, values = self.project_states(states, state_positions)
        last = most_recent_visible(states, state_positions, mask) if self.skip is not None else None
        return self.decode(token_ids, positions, keys, values, mask, last)

    # ------------------------------------------------------------ inference
    def start_round(self, cache, new_tokens, new_states, start, root_token, count=None) -> torch.Tensor:
        """Commit K/V of the true states at positions start..start+L-1 and draft the root.

        new_tokens: [L] (unused: Beagle needs states only); new_states: [L, d]; root_token: int or [1]
        tensor at position start+L. The fast path pads: ``count`` ([1] tensor) of the L are real, the
        root then sits at start+count, and ``start`` is a [1] tensor. Returns the root's draft state [1, d].
        """
        device = self.device
        written = new_states.shape[0]
        count = written if count is None else count
        if written:
            positions = cache.positions(start, written)
            keys, values = self.project_states(new_states[None].to(device), positions)
            cache.commit(keys, values, count)
        if self.skip is not None and written:  # the newest true state (the root sees it, no-concat nodes too)
            last = torch.as_tensor(count, device=new_states.device).reshape(1) - 1
            cache.remember_last_state(new_states.index_select(0, last.clamp(min=0)).to(device, self.dtype))
        root_position = start + count
        keys, values = cache.visible()
        root = torch.as_tensor(root_token, device=device).reshape(1, 1)
        last = cache.last_state[None] if self.skip is not None else None
        hidden = self.decode(root, cache.same_positions(root_position, 1), keys, values, cache.committed_mask(1),
                             last)[0]
        cache.begin_tree(root_position, hidden)
        return hidden

    def expand(self, cache, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """One tree level. tokens: [n] children of previous-level nodes ``parents`` [n].

        concat (default): the previous level's draft states are appended lazily as K/V
        (the last level's states are never appended), each node seeing its own ancestry.
        no-concat: nodes see the true states only.
        """
        cache.level += 1
        position = cache.root_position + cache.level
        previous = cache.level_hidden  # [m, d] states at position - 1
        if cache.concat:
            keys, values = self.project_states(previous[None], cache.same_positions(position - 1, previous.shape[0]))
            cache.add_tree_entries(keys, values, parents, owner=parents)
        else:
            cache.inherit(parents)
        last = None
        if self.skip is not None:  # concat: the parent's draft state; else the newest true state
            last = (previous[parents] if cache.concat else cache.last_state.expand(tokens.shape[0], -1))[None]
        keys, values = cache.visible()
        positions = cache.same_positions(position, tokens.shape[0])
        hidden = self.decode(tokens[None].to(self.device), positions, keys, values, cache.mask(), last)[0]
        cache.level_hidden = hidden
        return hidden

