"""Building blocks shared by both drafts: RMSNorm, RoPE, (cross-)attention with GQA, SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from beagle.kernels.fast_attention import grouped_attention
from beagle.models.config import DraftConfig


class RMSNorm(nn.Module):
    """LLaMA-style RMSNorm (computed in float32)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """RoPE with the target's parameters (default, or any type HF's ROPE_INIT_FUNCTIONS knows)."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        inv_freq, self.scaling = _rope_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [B, T] -> cos, sin: [B, 1, T, head_dim]."""
        freqs = positions.float()[..., None] * self.inv_freq.float()
        angles = torch.cat([freqs, freqs], dim=-1)
        return (angles.cos() * self.scaling).to(dtype)[:, None], (angles.sin() * self.scaling).to(dtype)[:, None]


def _rope_inv_freq(config: DraftConfig) -> tuple[torch.Tensor, float]:
    parameters = config.rope_parameters
    rope_type = parameters.get("rope_type", "default")
    if rope_type == "default":
        theta = float(parameters.get("rope_theta", 10000.0))
        exponent = torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim
        return (1.0 / theta**exponent).float(), 1.0
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    llama = LlamaConfig(
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters=dict(parameters),
    )
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](llama, None)
    return inv_freq.float(), float(scaling)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE (rotate-half convention). x: [B, H, T, hd]; cos/sin: [B, 1, T, hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Multi-head attention with GQA whose queries and keys/values may come from different streams.

    Beagle uses it as cross-attention (queries: token embeddings; keys/values: states);
    EAGLE-2 as self-attention (both from the fused inputs).
    """

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)
        # Decoding through beagle.kernels.fast_attention.grouped_attention (set by DraftModel.bind_target from
        # the target's fast_attention); training always runs SDPA.
        self.grouped_decode = False

    def project_kv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, S, d] -> keys (rotated), values: [B, KV, S, hd]."""
        batch, length, _ = x.shape
        keys = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        values = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        return rotate(keys, *rope), values

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """x: [B, T, d] queries; keys/values: [B, KV, S, hd]; mask: [B or 1, 1, T, S] bool (True = visible).

        A query row with no visible key gets attention output 0 (Beagle's first position).
        Returns [B, T, d].
        """
        batch, length, _ = x.shape
        queries = rotate(self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2), *rope)
        empty_rows = None
        if mask is not None:
            # A row with no visible key (Beagle's first position) looks at key 0 to avoid NaN; its output
            # is zeroed below. Unconditional, so no host read decides it (the fast path captures this).
            empty_rows = ~mask.any(dim=-1, keepdim=True)  # [B, 1, T, 1]
            mask = torch.cat([mask[..., :1] | empty_rows, mask[..., 1:]], dim=-1)
        if self.grouped_decode and not torch.is_grad_enabled():  # target.fast_attention == "grouped"
            out = grouped_attention(self, queries, keys, values, mask)[0]  # [B, T, H, hd]
            if empty_rows is not None:
                out = out.masked_fill(empty_rows.transpose(1, 2), 0.0)
            return self.o_proj(out.reshape(batch, length, self.heads * self.head_dim))
        grouped = {}
        if self.kv_heads != self.heads:  # GQA: each key/value head serves `repeat` consecutive query heads
            if torch.is_grad_enabled():
                # Training: copy the heads (SDPA's memory-efficient kernel, which takes a mask, has no GQA).
                repeat = self.heads // self.kv_heads
                keys = _repeat_heads(keys, repeat)
                values = _repeat_heads(values, repeat)
            else:  # decoding: SDPA reads the shared heads in place (no copy of the KV store per level)
                grouped = {"enable_gqa": True}
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, **grouped)
        if empty_rows is not None:
            out = out.masked_fill(empty_rows, 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


def _repeat_heads(x: torch.Tensor, repeat: int) -> torch.Tensor:
    """[B, KV, S, hd] -> [B, KV·repeat, S, hd], head h of the output = head h // repeat of the input."""
    batch, heads, length, size = x.shape
    return x[:, :, None].expand(batch, heads, repeat, length, size).reshape(batch, heads * repeat, length, size)


class SwiGLU(nn.Module):
    """LLaMA MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
