"""Closed-form parameter counts of the drafts (shared embedding and LM head excluded)."""

from __future__ import annotations

from beagle.models.config import DraftConfig


def parameter_formula(config: DraftConfig) -> int:
    """Beagle: attention (q, k, v, o) + SwiGLU + 3 norms. EAGLE-2: same layer + fc(2d→d, bias) + 1 norm.

    For a LLaMA-2-7B-shaped target (d=4096, MLP 11008): Beagle ≈ 202.4M, EAGLE-2 ≈ 236.0M.
    """
    d, hd = config.hidden_size, config.head_dim
    bias = config.attention_bias
    q = d * config.num_attention_heads * hd + (config.num_attention_heads * hd if bias else 0)
    kv = 2 * (d * config.num_key_value_heads * hd + (config.num_key_value_heads * hd if bias else 0))
    o = config.num_attention_heads * hd * d
    mlp = 3 * d * config.intermediate_size
    layer = q + kv + o + mlp
    if config.arch == "beagle":
        return layer + 3 * d  # query, state and MLP norms
    return layer + 2 * d * d + d + d  # fc weight + bias, MLP norm
