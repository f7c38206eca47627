import json
import os

import pytest
import torch

from beagle.errors import BeagleError, IncompatibleDraftError
from beagle.models import checkpoint
from beagle.models.checkpoint import build_draft, load_draft
from beagle.models.config import DraftConfig
from beagle.models.params import parameter_formula
from tests.conftest import make_tiny_target


@pytest.mark.parametrize("arch", ["beagle", "eagle2"])
def test_shapes_and_round_trip(tiny_target, arch, tmp_path):
    draft = build_draft(tiny_target, arch)
    ids = torch.randint(0, tiny_target.vocab_size, (2, 9))
    states = torch.randn(2, 9, 64)
    mask = torch.ones(9, 9, dtype=torch.bool).tril(-1 if arch == "beagle" else 0)[None, None]
    out = draft(ids, states, mask)
    assert out.shape == (2, 9, 64)
    assert draft.logits(out).shape == (2, 9, tiny_target.vocab_size)
    draft.save_pretrained(tmp_path / "d")
    files = sorted(os.listdir(tmp_path / "d"))
    assert files == ["config.json", "model.safetensors"]
    loaded = load_draft(tmp_path / "d", target=tiny_target)
    torch.testing.assert_close(loaded(ids, states, mask), out, rtol=0, atol=0)
    # The shared embedding / LM head are not stored.
    from safetensors.torch import load_file

    names = load_file(str(tmp_path / "d" / "model.safetensors")).keys()
    assert not any("embed" in n or "lm_head" in n for n in names)
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["arch"] == arch and config["target"]["vocab_size"] == tiny_target.vocab_size


def test_beagle_masks_diagonal_and_first_position(llama_target):
    draft = build_draft(llama_target, "beagle")
    ids = torch.randint(0, 97, (1, 6))
    states = torch.randn(1, 6, 64)
    strict = torch.ones(6, 6, dtype=torch.bool).tril(-1)[None, None]
    out = draft(ids, states, strict)
    assert torch.isfinite(out).all()
    # Position 0 sees no state: changing any state leaves it unchanged; changing state 3
    # changes positions 4 and 5 only (the diagonal is masked).
    changed = states.clone()
    changed[0, 3] += 1.0
    out2 = draft(ids, changed, strict)
    differs = (out2 - out).abs().amax(-1)[0] > 1e-6
    assert differs.tolist() == [False, False, False, False, True, True]
    # Position 0 is the embedding passed through the MLP block only (attention output 0).
    embedded = draft.embed_tokens(ids[:, :1])
    expected = draft.mlp(draft.mlp_norm(embedded)) + embedded
    torch.testing.assert_close(out[:, :1], expected)


def test_parameter_counts_match_formula_and_paper_scale(llama_target):
    for arch in ("beagle", "eagle2"):
        draft = build_draft(llama_target, arch)
        assert draft.num_parameters() == parameter_formula(draft.config)
    from transformers import LlamaConfig

    seven_b = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)
    beagle = parameter_formula(DraftConfig.from_target(seven_b, "beagle"))
    eagle = parameter_formula(DraftConfig.from_target(seven_b, "eagle2"))
    assert round(beagle / 1e6) == 202 and round(eagle / 1e6) == 236
    llama3 = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8)
    assert round(parameter_formula(DraftConfig.from_target(llama3, "beagle")) / 1e6) == 218


def test_incompatible_target_is_refused_with_both_shapes(llama_target, tmp_path):
    build_draft(llama_target, "beagle").save_pretrained(tmp_path / "d")
    other = make_tiny_target("llama", vocab_size=211)
    with pytest.raises(IncompatibleDraftError) as error:
        load_draft(tmp_path / "d", target=other)
    assert "97" in str(error.value) and "211" in str(error.value)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(BeagleError, match="not a draft checkpoint"):
        load_draft(tmp_path)


def test_atomic_save_keeps_previous_checkpoint_on_crash(llama_target, tmp_path, monkeypatch):
    draft = build_draft(llama_target, "beagle")
    draft.save_pretrained(tmp_path / "d")
    before = (tmp_path / "d" / "model.safetensors").read_bytes()
    with torch.no_grad():
        draft.mlp.up_proj.weight.add_(1.0)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint.DraftConfig, "save", crash)
    with pytest.raises(RuntimeError):
        draft.save_pretrained(tmp_path / "d")
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["d"]  # no temporary leftovers
    load_draft(tmp_path / "d", target=llama_target)


def test_gqa_and_rope_follow_target():
    target = make_tiny_target("qwen3")
    config = build_draft(target, "beagle").config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)
    assert config.rope_parameters["rope_theta"] == target.config.rope_parameters["rope_theta"]


def test_load_draft_accepts_shipped_names(monkeypatch, tmp_path, tiny_target):
    import beagle.assets.shipped as shipped
    from beagle.models.checkpoint import save_draft

    draft = build_draft(tiny_target, "beagle")
    save_draft(draft, tmp_path / "shipped-beagle")
    monkeypatch.setattr(shipped, "shipped_draft_path", lambda name: tmp_path / "shipped-beagle")
    loaded = load_draft("smollm2-beagle", target=tiny_target)
    assert loaded.config.arch == "beagle"
    assert all(torch.equal(a, b) for a, b in zip(draft.state_dict().values(), loaded.state_dict().values()))


def test_draft_logits_cpu_kernel_matches_linear(tiny_target):
    """DraftModel.logits through the CPU linear kernel computes the same logits as a plain linear layer."""
    draft = build_draft(tiny_target, "beagle")
    head = tiny_target.model.get_output_embeddings().weight
    for rows in (1, 3, 9, 70):
        hidden = torch.randn(1, rows, head.shape[1])
        with torch.no_grad():
            got = draft.logits(hidden)
        assert got.shape == (1, rows, head.shape[0])
        torch.testing.assert_close(got, torch.nn.functional.linear(hidden, head).float(), rtol=1e-5, atol=1e-5)
