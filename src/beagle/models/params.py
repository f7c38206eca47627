"""Closed-form parameter counts of the drafts (shared embedding and LM head excluded).

For a LLaMA-2-7B-shaped target (d=4096, MLP 11008): Beagle ≈ 202.4M, EAGLE-2 ≈ 236.0M (each architecture's
``parameter_count`` says what it adds to the shared layer shape below).
"""

from __future__ import annotations

from beagle.models.config import DraftConfig
from beagle.models.registry import draft_class


def parameter_formula(config: DraftConfig) -> int:
    """The draft's parameters from its config alone: its architecture's ``parameter_count``."""
    return draft_class(config.arch).parameter_count(config)


def layer_parameter_count(config: DraftConfig) -> int:
    """One attention block (q, k, v, o projections, with their biases when ``attention_bias``) + a SwiGLU MLP."""
    d, hd = config.hidden_size, config.head_dim
    bias = config.attention_bias
    q = d * config.num_attention_heads * hd + (config.num_attention_heads * hd if bias else 0)
    kv = 2 * (d * config.num_key_value_heads * hd + (config.num_key_value_heads * hd if bias else 0))
    o = config.num_attention_heads * hd * d
    mlp = 3 * d * config.intermediate_size
    return q + kv + o + mlp
