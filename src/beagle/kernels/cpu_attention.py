"""Grouped-query attention with a mask on a CPU, without copying the keys and values.

transformers' SDPA attention copies every layer's keys and values ``num_key_value_groups`` times
(``repeat_kv``) whenever an attention mask is present, because CUDA's fused kernels cannot take grouped
heads with a mask. A tree verification pass always carries a mask, so on a CPU it paid for two copies of
the whole KV cache per layer per pass, a sizeable share of a pass (``docs/results/cpu-kernels.md``).
PyTorch's CPU SDPA takes ``enable_gqa=True`` with a mask and reads the grouped heads in place.

:func:`use_cpu_gqa_attention` switches a model whose attention is ``sdpa`` to :data:`IMPLEMENTATION`,
registered with transformers' ``AttentionInterface`` (and its mask builder with ``AttentionMaskInterface``,
so masks are built exactly as for ``sdpa``). The function hands every call that is not a masked
grouped-query call on a CPU to transformers' own ``sdpa_attention_forward``, so GPUs and prefill keep the
stock path. Outputs agree with ``sdpa`` to rounding (tests/test_cpu_attention.py).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "beagle_cpu_gqa_sdpa"


def cpu_gqa_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [B, H, q, hd], key / value [B, H_kv, k, hd],
    attention_mask [B | 1, 1, q, k] (bool or additive) | None -> ([B, q, H, hd], None)."""
    groups = getattr(module, "num_key_value_groups", 1)
    if (query.device.type != "cpu" or attention_mask is None or groups <= 1 or kwargs.get("softcap") is not None
            or kwargs.get("position_bias") is not None or key.shape[-1] != value.shape[-1]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
    return output.transpose(1, 2).contiguous(), None


_registered = False


def register() -> None:
    """Register :data:`IMPLEMENTATION` with transformers (idempotent)."""
    global _registered
    if not _registered:
        AttentionInterface.register(IMPLEMENTATION, cpu_gqa_sdpa_attention)
        AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
        _registered = True


def use_cpu_gqa_attention(model) -> bool:
    """Switch a transformers model from ``sdpa`` to :data:`IMPLEMENTATION`; True if it switched (or had).
    Other implementations (eager, flex, flash) are left alone."""
    current = getattr(model.config, "_attn_implementation", None)
    if current == IMPLEMENTATION:
        return True
    if current != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    register()
    model.set_attn_implementation(IMPLEMENTATION)
    return True
