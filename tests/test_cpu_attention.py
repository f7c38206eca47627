"""Grouped-query SDPA with a mask on a CPU (beagle.kernels.cpu_attention): the same attention as transformers'
sdpa, installed on CPU targets, handing other calls to transformers."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from beagle.target_model.cache import tree_attention_mask
from beagle.kernels.cpu_attention import IMPLEMENTATION, cpu_gqa_sdpa_attention, use_cpu_gqa_attention
from beagle.target_model.session import DynamicSession
from tests.conftest import FAMILIES, make_tiny_target


class _Module(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
@pytest.mark.parametrize("groups", [1, 3])
def test_equals_transformers_sdpa(mask_kind, groups):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 3 * groups, 5, 16, generator=generator)
    key = torch.randn(1, 3, 12, 16, generator=generator)
    value = torch.randn(1, 3, 12, 16, generator=generator)
    visible = torch.rand(1, 1, 5, 12, generator=generator) > 0.3
    visible[..., 0] = True
    mask = {"bool": visible, "additive": torch.zeros(visible.shape).masked_fill(~visible, -1e30), "none": None}[mask_kind]
    module = _Module(groups)
    got, _ = cpu_gqa_sdpa_attention(module, query, key, value, mask, scaling=0.25)
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert got.shape == want.shape == (1, 5, 3 * groups, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_target_uses_it_and_verification_logits_match_sdpa(family):
    target = make_tiny_target(family)
    assert target.model.config._attn_implementation == IMPLEMENTATION
    ids = torch.randint(0, target.vocab_size, (1, 10))
    ancestry = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    tree_tokens = torch.randint(0, target.vocab_size, (4,))
    positions = 10 + torch.tensor([0, 1, 1, 2])
    results = []
    for implementation in (IMPLEMENTATION, "sdpa"):
        target.model.set_attn_implementation(implementation)
        session = DynamicSession(target)
        session.prefill(ids)
        results.append(target.logits(session.verify(tree_tokens, positions, ancestry)))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)
    assert tree_attention_mask(10, ancestry, torch.float32).shape == (1, 1, 4, 14)


def test_other_implementations_are_left_alone():
    target = make_tiny_target("llama")
    target.model.set_attn_implementation("eager")
    assert not use_cpu_gqa_attention(target.model)
    assert target.model.config._attn_implementation == "eager"
    target.model.set_attn_implementation("sdpa")
    assert use_cpu_gqa_attention(target.model) and use_cpu_gqa_attention(target.model)  # idempotent
    assert target.model.config._attn_implementation == IMPLEMENTATION
