"""EAGLE-1/2 baseline draft: fc(2d→d) over [e(t_n); f_{n-1}], one self-attention decoder layer.

    x_n = fc([e(t_n); f_{n-1}])                       # fusion of token and previous feature
    y_n = SelfAttn(x_{≤n}) + x_n                       # causal, RoPE, GQA (no input norm, as EAGLE)
    f_n = MLP(norm(y_n)) + y_n                         # predicted next feature -> target LM head

Position n holds token t_n with the feature of position n-1, so sequence position 0 has
no input (training starts at position 1).
"""

from __future__ import annotations

import torch
from torch import nn

from beagle.errors import BeagleError
from beagle.models.base import DraftModel
from beagle.models.eagle2 import ARCHITECTURE
from beagle.models.config import DraftConfig
from beagle.models.layers import Attention, RMSNorm, RotaryEmbedding, SwiGLU
from beagle.models.params import layer_parameter_count


class Eagle2Draft(DraftModel):
    arch = ARCHITECTURE.name
    fsdp_methods = ("fuse", "layer")

    def __init__(self, config: DraftConfig):
        super().__init__(config)
        if config.last_state_skip:
            raise BeagleError("the last-state skip is a Beagle option; an EAGLE-2 draft reads its last state "
                              "through fc already (drop last_state_skip / --last-state-skip)")
        size = config.hidden_size
        self.fc = nn.Linear(2 * size, size, bias=True)
        self.self_attn = Attention(config)
        self.mlp_norm = RMSNorm(size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)
        self.rotary = RotaryEmbedding(config)

    @classmethod
    def parameter_count(cls, config: DraftConfig) -> int:
        """Attention (q, k, v, o) + SwiGLU + fc(2d→d) weight and bias + the MLP norm."""
        d = config.hidden_size
        return layer_parameter_count(config) + 2 * d * d + d + d

    def fuse(self, token_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """token_ids: [B, T]; features: [B, T, d] (the previous position's) -> fused inputs [B, T, d]."""
        embedded = self.embed_tokens(token_ids)
        return self.fc(torch.cat([embedded, features.to(self.dtype)], dim=-1))

    def layer(
        self,
        fused: torch.Tensor,
        positions: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder layer over fused inputs [B, T, d] at positions [B, T]; ``past`` = cached (keys, values)
        [B, KV, P, hd] seen before the new ones; mask [B or 1, 1, T, P + T] bool.
        Returns (features [B, T, d], new keys, new values [B, KV, T, hd])."""
        rope = self.rotary(positions, fused.dtype)
        new_keys, new_values = self.self_attn.project_kv(fused, rope)
        keys, values = new_keys, new_values
        if past is not None:
            keys = torch.cat([past[0], new_keys], dim=2)
            values = torch.cat([past[1], new_values], dim=2)
        attended = self.self_attn(fused, rope, keys, values, mask) + fused
        return self.mlp(self.mlp_norm(attended)) + attended, new_keys, new_values

    def forward(self, token_ids: torch.Tensor, prev_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Training forward. token_ids: [B, T] (t_1..t_T); prev_features: [B, T, d] (f_0..f_{T-1});
        mask: [B or 1, 1, T, T] bool. Positions 1..T. Returns predicted features [B, T, d]."""
        batch, length = token_ids.shape
        positions = torch.arange(1, length + 1, device=token_ids.device).expand(batch, length)
        return self.layer(self.fuse(token_ids, prev_features), positions, None, mask)[0]

    # ------------------------------------------------------------ inference
    def start_round(self, cache, new_tokens, new_states, start, root_token, count=None) -> torch.Tensor:
        """Commit the fused inputs (t_{j+1}, f_j) for j = start..start+L-1 (t_{start+L} = root)
        at positions start+1..start+L, causally; the last output is the root's feature [1, d].
        The fast path pads: ``count`` ([1] tensor) of the L are real, so the root's input is row
        count-1 and ``start`` is a [1] tensor."""
        device = self.device
        written = new_states.shape[0]
        root = torch.as_tensor(root_token, device=device).reshape(1)
        tokens = torch.cat([new_tokens[1:].to(device), root])  # [L]: t_{start+1} .. t_{start+L}
        last = written - 1 if count is None else count - 1
        if count is not None:  # padded: the root's token goes to row count-1
            rows = torch.arange(written, device=device)
            tokens = torch.where(rows == last, root, tokens)
        positions = cache.positions(start + 1, written)
        fused = self.fuse(tokens[None], new_states[None].to(device))
        causal = torch.ones(written, written, dtype=torch.bool, device=device).tril()
        past_keys, past_values = cache.visible()
        committed = cache.committed_mask(written)
        if committed is None:
            committed = torch.ones(1, 1, written, past_keys.shape[2], dtype=torch.bool, device=device)
        mask = torch.cat([committed, causal[None, None]], dim=-1)
        features, keys, values = self.layer(fused, positions, (past_keys, past_values), mask)
        cache.commit(keys, values, count)
        hidden = features[:, last] if count is None else features[0].index_select(0, last.reshape(1))
        cache.begin_tree(start + (written if count is None else count), hidden)
        return hidden

    def expand(self, cache, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """One tree level: each node fuses its token with its parent's feature and attends to
        the committed entries, its ancestors' entries and itself."""
        cache.level += 1
        count = tokens.shape[0]
        positions = cache.same_positions(cache.root_position + cache.level, count)
        fused = self.fuse(tokens[None].to(self.device), cache.level_hidden[parents][None])
        rope = self.rotary(positions, fused.dtype)
        keys, values = self.self_attn.project_kv(fused, rope)
        cache.add_tree_entries(keys, values, parents, owner=torch.arange(count, device=self.device))
        all_keys, all_values = cache.visible()
        attended = self.self_attn(fused, rope, all_keys, all_values, cache.mask()) + fused
        hidden = (self.mlp(self.mlp_norm(attended)) + attended)[0]
        cache.level_hidden = hidden
        return hidden
