"""The grouped fast-path attention (beagle.kernels.fast_attention): the same attention as SDPA, used only inside
the fast path's passes (and the draft's decoding) of a target loaded with fast_attention="grouped"."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import GenerationSettings
from beagle.decoding.tree import TreeSettings
from beagle.errors import BeagleError
from beagle.kernels import fast_attention
from beagle.models import layers
from beagle.models.checkpoint import build_draft
from tests.conftest import FAMILIES, make_tiny_target


def _greedy(tokens=20):
    return GenerationSettings(max_new_tokens=tokens, ignore_eos=True)


@pytest.mark.parametrize("heads,kv_heads,count,boolean", list(itertools.product([4], [4, 2, 1], [1, 7], [False, True])))
def test_grouped_attention_is_sdpa(heads, kv_heads, count, boolean):
    generator = torch.Generator().manual_seed(heads * 100 + kv_heads * 10 + count)
    capacity, size = 23, 8
    q = torch.randn(1, heads, count, size, generator=generator)
    k = torch.randn(1, kv_heads, capacity, size, generator=generator)
    v = torch.randn(1, kv_heads, capacity, size, generator=generator)
    visible = torch.rand(count, capacity, generator=generator) < 0.6
    visible[:, 0] = True  # every row sees a key
    mask = visible[None, None] if boolean else torch.where(visible, 0.0, torch.finfo(torch.float32).min)[None, None]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv_heads != heads, scale=0.3)
    out, weights = fast_attention.grouped_attention(None, q, k, v, mask, scaling=0.3)
    assert weights is None
    assert out.shape == (1, count, heads, size)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)


def _counting(monkeypatch):
    calls = {"target": 0, "draft": 0}
    real = fast_attention.grouped_attention

    def target_calls(*args, **kwargs):
        calls["target"] += 1
        return real(*args, **kwargs)

    def draft_calls(*args, **kwargs):
        calls["draft"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_attention, "grouped_attention", target_calls)  # what register() hands transformers
    monkeypatch.setattr(layers, "grouped_attention", draft_calls)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_grouped_fast_path_gives_the_plain_tokens(family, monkeypatch):
    """Both drafts on the fast path of a target with fast_attention="grouped": the plain AR tokens (fp32),
    through the grouped attention in the target's passes and the draft, and the model's own attention after."""
    calls = _counting(monkeypatch)
    target = make_tiny_target(family, seed=3)
    prompts = [torch.randint(0, target.vocab_size, (length,), generator=torch.Generator().manual_seed(length)).tolist()
               for length in (5, 17)]
    expected = [SpeculativeGenerator(target).generate(prompt, _greedy()).token_ids for prompt in prompts]
    own = target.config._attn_implementation
    target.fast_attention = "grouped"
    for arch in ("beagle", "eagle2"):
        draft = build_draft(target, arch)
        fast = SpeculativeGenerator(target, draft, TreeSettings(3, 3, 8), fast=True, adaptive=False)
        fast_plain = SpeculativeGenerator(target, fast=True)
        for prompt, tokens in zip(prompts, expected):
            assert fast.generate(prompt, _greedy()).token_ids == tokens, (family, arch)
            assert fast_plain.generate(prompt, _greedy()).token_ids == tokens
    assert calls["target"] > 0 and calls["draft"] > 0
    assert target.config._attn_implementation == own != fast_attention.GROUPED  # restored outside the passes
    assert target._beagle_fixed_passes.attention == "grouped"


def test_grouped_fast_path_traces_and_replaces_an_sdpa_instance(monkeypatch):
    """Traced with TorchDynamo (what the GPU compiles) through the attention switch; a target switched to
    "grouped" gets a fresh instance of its passes rather than the SDPA one."""
    import torch._dynamo

    torch._dynamo.reset()
    target = make_tiny_target("llama", seed=4)
    prompt = list(range(3, 14))
    expected = SpeculativeGenerator(target).generate(prompt, _greedy(12)).token_ids
    SpeculativeGenerator(target, fast=True).generate(prompt, _greedy(4))
    sdpa_passes = target._beagle_fixed_passes
    calls = _counting(monkeypatch)
    target.fast_attention = "grouped"
    fast = SpeculativeGenerator(target, build_draft(target, "beagle"), TreeSettings(3, 3, 8), fast=True, compile=True,
                                compile_backend="eager", adaptive=False)
    assert fast.generate(prompt, _greedy(12)).token_ids == expected
    assert target._beagle_fixed_passes is not sdpa_passes
    assert calls["target"] > 0


def test_bad_choice_is_one_line_error(tmp_path):
    from beagle.target_model.model import load_target

    with pytest.raises(BeagleError, match="fast-path attention 'flash'.*sdpa, grouped"):
        load_target(str(tmp_path), fast_attention="flash")


def test_cli_flag_and_environment(monkeypatch):
    import argparse

    from beagle.cli.common import add_path_args, add_target_args, hardware_args

    parser = argparse.ArgumentParser()
    add_target_args(parser)
    add_path_args(parser)
    assert hardware_args(parser.parse_args(["--target", "x"]))["fast_attention"] == "sdpa"
    assert hardware_args(parser.parse_args(["--target", "x", "--fast-attention", "grouped"]))["fast_attention"] == "grouped"
    monkeypatch.setenv("BEAGLE_FAST_ATTENTION", "grouped")
    assert hardware_args(parser.parse_args(["--target", "x"]))["fast_attention"] == "grouped"
    assert hardware_args(parser.parse_args(["--target", "x", "--fast-attention", "sdpa"]))["fast_attention"] == "sdpa"
    with pytest.raises(SystemExit):
        parser.parse_args(["--target", "x", "--fast-attention", "flash"])
