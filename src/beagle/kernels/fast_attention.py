"""Attention for the fast path's fixed-capacity passes: a few query tokens over the whole cache.

A fast-path pass attends T query tokens (1 for a plain step, root + tree tokens for a verify pass) over all
``capacity`` cache slots, with an additive mask hiding the slots that are not part of the sequence
(:mod:`beagle.target_model.fast_passes`). Given a mask, PyTorch's SDPA picks its memory-efficient kernel,
which parallelises over heads and query tiles only: with T = 1 it runs one thread block per head walking
every slot in turn. On an H200 that kernel took 53 µs per layer of SmolLM2's 2.9 ms plain step (30 layers:
more than half the step) and 43 µs per layer of the 8B shape's 6.9 ms (``docs/results/target-step-h200``),
and its cost grows with the reserved capacity, not with the sequence.

:func:`grouped_attention` (``fast_attention="grouped"``) writes the same attention as two batched matmuls
over [KV heads, group · T, head dim] queries — no copies of keys or values for grouped-query attention —
and a float32 softmax, which cuBLAS and inductor spread over the whole GPU. It is registered with
transformers' ``AttentionInterface`` (the extension point for attention functions, so no modeling file is
touched) and used only inside the fast path's T-token passes (:func:`attention_implementation`); the prefill
and the eager path keep the model's own attention. A draft bound to such a target decodes with it too (its
attention reads a cache of the same capacity). ``"sdpa"`` (the default) keeps SDPA everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

FAST_ATTENTION = ("sdpa", "grouped")
GROUPED = "beagle_grouped"  # the name under transformers' AttentionInterface


def grouped_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, T, hd], key / value [B, KV, C, hd] (H = G · KV; query head h reads KV head h // G, as
    transformers' ``repeat_kv``), attention_mask [B or 1, 1, T, ≥ C] additive, or bool (True = visible; every
    row must see a key), or None.
    Returns (output [B, T, H, hd], None), as transformers' attention functions do."""
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("attention sinks are not supported by the grouped fast-path attention")
    batch, heads, count, size = query.shape
    groups = key.shape[1]
    per_group = heads // groups
    scale = size ** -0.5 if scaling is None else scaling
    grouped = query.reshape(batch, groups, per_group * count, size)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale  # [B, KV, G·T, C]
    scores = scores.view(batch, groups, per_group, count, -1)
    if attention_mask is not None:
        mask = attention_mask[:, :, None, :, : key.shape[-2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    weights = torch.softmax(scores, dim=-1).to(value.dtype).view(batch, groups, per_group * count, -1)
    output = torch.matmul(weights, value).view(batch, heads, count, size)
    return output.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :func:`grouped_attention` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(GROUPED, grouped_attention)


def check_fast_attention(choice: str) -> str:
    from beagle.errors import BeagleError

    if choice not in FAST_ATTENTION:
        raise BeagleError(f"unknown fast-path attention {choice!r}; choose one of {', '.join(FAST_ATTENTION)}")
    return choice


def _configs(decoder: torch.nn.Module) -> list:
    """The distinct config objects the decoder's modules read ``_attn_implementation`` from."""
    found: dict[int, object] = {}
    for module in decoder.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            found.setdefault(id(config), config)
    return list(found.values())


@contextlib.contextmanager
def attention_implementation(decoder: torch.nn.Module, choice: str) -> Iterator[None]:
    """Within the block the decoder's attention layers call the ``choice`` attention (``"sdpa"``: unchanged)."""
    if choice == "sdpa":
        yield
        return
    register()
    configs = _configs(decoder)
    if not configs:
        from beagle.errors import BeagleError

        raise BeagleError("this transformers release keeps no _attn_implementation_internal on the model's config; "
                          "run with fast_attention='sdpa' (--fast-attention sdpa)")
    saved = [config._attn_implementation_internal for config in configs]
    for config in configs:
        config._attn_implementation_internal = GROUPED
    try:
        yield
    finally:
        for config, value in zip(configs, saved):
            config._attn_implementation_internal = value
