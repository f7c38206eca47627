"""Test helpers: 'bigram' targets and oracle drafts that agree with them, so trees get deep acceptance."""

from __future__ import annotations

import torch

from beagle.models.checkpoint import build_draft


def make_bigram(target) -> None:
    """Zero every layer's attention output and MLP down projection: the target's next token then
    depends on the current token only (logits = lm_head(norm(e(x))))."""
    with torch.no_grad():
        for layer in target.model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


def oracle_draft(target, arch: str, noise: float = 0.0, seed: int = 0):
    """A draft whose state is h = e(x) (+ noise), so its argmax equals a bigram target's."""
    draft = build_draft(target, arch)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if arch == "beagle":
            draft.cross_attn.o_proj.weight.zero_()
        else:
            size = draft.config.hidden_size
            draft.fc.weight.zero_()
            draft.fc.weight[:, :size] = torch.eye(size)
            draft.self_attn.o_proj.weight.zero_()
        draft.mlp.down_proj.weight.zero_()
        if noise:
            weight = draft.mlp.down_proj.weight
            weight.add_(noise * torch.randn(weight.shape, generator=generator))
    return draft
