"""`beagle export`: vLLM layouts (EAGLE-2 bias folding, Beagle's slot pairing) checked numerically against our
forwards in plain torch, dtype re-saves, atomic writes and one-line errors. No vLLM needed (tests/vllm runs it)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from beagle.cli.main import main
from beagle.integrations.export import export_draft
from beagle.models.checkpoint import build_draft, load_draft, save_draft
from tests.conftest import make_tiny_target


def _randomise(draft, seed: int = 0) -> None:
    """Every parameter random (biases included: build_draft zeroes them), so the folding is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator) + (parameter == 1).float())


@pytest.fixture(scope="module")
def target():
    return make_tiny_target("llama")


@pytest.fixture(scope="module")
def drafts(target, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    out = {}
    for arch in ("eagle2", "beagle"):
        draft = build_draft(target, arch)
        _randomise(draft, seed=len(arch))
        save_draft(draft, root / arch)
        out[arch] = root / arch
    return out


# ------------------------------------------------------------------ plain-torch vLLM reference forwards
def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, positions, head_dim, theta):
    """Neox-style RoPE on x [T, H, hd] at positions [T] (vLLM's get_rope, is_neox_style=True)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions.double()[:, None] * inv[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1).float()[:, None], torch.cat([angles.sin()] * 2, -1).float()[:, None]
    half = head_dim // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def _attend(q, k, v, heads, kv_heads):
    """Causal attention over slots (slot i sees j <= i), GQA; q [T, H, hd], k/v [T, KV, hd] -> [T, H*hd]."""
    repeat = heads // kv_heads
    k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
    return out.transpose(0, 1).reshape(q.shape[0], -1)


def _linear(weights, name, x):
    return F.linear(x, weights[f"{name}.weight"], weights.get(f"{name}.bias"))


def vllm_eagle_forward(weights, config, embedded, hidden, positions):
    """vLLM's EagleLlamaForCausalLM over slots: fc (no bias) on cat(e(x_{i+1}), h_i), one Llama layer without
    its input norm, residual added at the end (llama_eagle.py)."""
    heads, kv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    theta = config["rope_parameters"]["rope_theta"]
    x = F.linear(torch.cat([embedded, hidden], -1), weights["fc.weight"])
    p = "layers.0."
    q = _rope(_linear(weights, p + "self_attn.q_proj", x).view(-1, heads, hd), positions, hd, theta)
    k = _rope(_linear(weights, p + "self_attn.k_proj", x).view(-1, kv, hd), positions, hd, theta)
    v = _linear(weights, p + "self_attn.v_proj", x).view(-1, kv, hd)
    y = _linear(weights, p + "self_attn.o_proj", _attend(q, k, v, heads, kv)) + x
    normed = _rms(y, weights[p + "post_attention_layernorm.weight"], config["rms_norm_eps"])
    mlp = _linear(weights, p + "mlp.down_proj",
                  F.silu(_linear(weights, p + "mlp.gate_proj", normed)) * _linear(weights, p + "mlp.up_proj", normed))
    return mlp + y


def vllm_beagle_forward(weights, config, embedded, hidden, positions):
    """The plugin's forward (beagle/integrations/vllm_model.py) over slots: q from norm(e(x_{i+1})) at
    position i+1, k/v from norm(h_i) at position i, causal over slots."""
    heads, kv, hd, eps = (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"],
                          config["rms_norm_eps"])
    theta = config["rope_parameters"]["rope_theta"]
    queries = _rms(embedded, weights["query_norm.weight"], eps)
    states = _rms(hidden, weights["state_norm.weight"], eps)
    q = _rope(_linear(weights, "cross_attn.q_proj", queries).view(-1, heads, hd), positions + 1, hd, theta)
    k = _rope(_linear(weights, "cross_attn.k_proj", states).view(-1, kv, hd), positions, hd, theta)
    v = _linear(weights, "cross_attn.v_proj", states).view(-1, kv, hd)
    y = _linear(weights, "cross_attn.o_proj", _attend(q, k, v, heads, kv)) + embedded
    normed = _rms(y, weights["mlp_norm.weight"], eps)
    return _linear(weights, "mlp.down_proj", F.silu(_linear(weights, "mlp.gate_proj", normed)) *
                   _linear(weights, "mlp.up_proj", normed)) + y


def _exported(folder):
    return load_file(str(folder / "model.safetensors")), json.loads((folder / "config.json").read_text())


def _sequence(target, length=12, seed=3):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, target.config.vocab_size, (length + 1,), generator=generator)
    states = torch.randn(length, target.config.hidden_size, generator=generator)
    return tokens, states  # slot i: token tokens[i + 1], state states[i]


# ------------------------------------------------------------------ layouts and numerics
def test_eagle2_layout_and_bias_folding(target, drafts, tmp_path):
    out = export_draft(drafts["eagle2"], tmp_path / "vllm", format="vllm", target="/models/tiny")
    weights, config = _exported(out)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 1
    assert config["attention_bias"] is True and config["beagle_export"]["target"] == "/models/tiny"
    assert not any("embed_tokens" in name or "lm_head" in name or "input_layernorm" in name for name in weights)
    assert "fc.bias" not in weights and all(tensor.dtype == torch.float32 for tensor in weights.values())
    assert {name for name in weights if name.startswith("layers.0.")} >= {
        "layers.0.self_attn.q_proj.bias", "layers.0.self_attn.o_proj.bias", "layers.0.post_attention_layernorm.weight"}

    draft = load_draft(drafts["eagle2"], target=target)
    assert draft.fc.bias.abs().sum() > 0  # the bias being folded is not zero
    tokens, states = _sequence(target)
    length = states.shape[0]
    with torch.no_grad():
        causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
        ours = draft(tokens[1:][None], states[None], causal)[0]
        embedded = target.embed(tokens[1:])
        theirs = vllm_eagle_forward(weights, config, embedded, states, torch.arange(length))
    torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-4)


def test_beagle_layout_and_slot_pairing(target, drafts, tmp_path):
    out = export_draft(drafts["beagle"], tmp_path / "vllm", format="vllm")
    weights, config = _exported(out)
    assert config["architectures"] == ["BeagleDraftForCausalLM"]
    assert config["beagle_export"]["arch"] == "beagle" and config["beagle_export"]["target"] == "tiny-llama"
    draft = load_draft(drafts["beagle"], target=target)
    assert set(weights) == set(draft.state_dict())

    tokens, states = _sequence(target)
    length = states.shape[0]
    with torch.no_grad():
        # Ours: query x_{i+1} at position i+1 sees the states at positions j < i+1.
        keys, values = draft.project_states(states[None], torch.arange(length)[None])
        visible = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
        ours = draft.decode(tokens[1:][None], torch.arange(1, length + 1)[None], keys, values, visible)[0]
        theirs = vllm_beagle_forward(weights, config, target.embed(tokens[1:]), states, torch.arange(length))
    torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-4)


def test_beagle_drafting_step_is_concat_mode(target, drafts, tmp_path):
    """vLLM feeds the draft's own output as the next slot's state: Beagle's concat drafting (start_round +
    expand on a one-node chain) gives the same draft states."""
    from beagle.models.draft_cache import DraftCache

    weights, config = _exported(export_draft(drafts["beagle"], tmp_path / "vllm", format="vllm"))
    draft = load_draft(drafts["beagle"], target=target)
    tokens, states = _sequence(target, length=8)
    with torch.no_grad():
        cache = DraftCache(draft.config.num_key_value_heads, draft.config.head_dim, draft.device, draft.dtype, 64)
        root = draft.start_round(cache, tokens[:8], states, 0, int(tokens[8]))  # state predicting x_9
        nxt = torch.tensor([int(tokens[3])])  # any chain token as x_9
        second = draft.expand(cache, nxt, torch.tensor([0]))
        # vLLM: slots 0..7 from the target, then slot 8 = (x_9, draft state of slot 7).
        first = vllm_beagle_forward(weights, config, target.embed(tokens[1:9]), states, torch.arange(8))
        chained = vllm_beagle_forward(weights, config, target.embed(torch.cat([tokens[1:9], nxt])),
                                      torch.cat([states, first[-1:]]), torch.arange(9))
    torch.testing.assert_close(first[-1], root[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(chained[-1], second[0], atol=2e-5, rtol=1e-4)


def test_shipped_drafts_export(tmp_path):
    for name, arch in (("smollm2-beagle", "BeagleDraftForCausalLM"), ("smollm2-eagle2", "LlamaForCausalLM")):
        out = export_draft(name, tmp_path / name, format="vllm", target="/m/smollm2")
        weights, config = _exported(out)
        assert config["architectures"] == [arch] and config["hidden_size"] == 576 and config["vocab_size"] == 49152
        assert config["beagle_export"]["source"] == name


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_beagle_format_resaves_in_dtype(drafts, tmp_path, dtype):
    source = load_draft(drafts["beagle"])
    out = export_draft(drafts["beagle"], tmp_path / "resaved", format="beagle", dtype=dtype)
    stored = load_file(str(out / "model.safetensors"))
    assert {tensor.dtype for tensor in stored.values()} == {getattr(torch, dtype)}
    again = load_draft(out)
    assert again.config.to_dict() == source.config.to_dict()
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor.to(getattr(torch, dtype)).float())


def test_beagle_format_keeps_the_source_dtype_by_default(tmp_path):
    out = export_draft("smollm2-eagle2", tmp_path / "copy", format="beagle")
    assert {tensor.dtype for tensor in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}


# ------------------------------------------------------------------ folders and errors
def test_cli_writes_atomically_and_refuses_non_empty_out(drafts, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--format", "vllm", str(drafts["eagle2"]), str(out)]) == 0
    assert "vllm serve" in capsys.readouterr().out
    first = (out / "model.safetensors").read_bytes()
    (tmp_path / "out.old").mkdir()  # a user's folder that happens to sit beside OUT: never touched
    (tmp_path / "out.old" / "keep").write_text("mine")

    assert main(["export", "--format", "vllm", str(drafts["beagle"]), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1 and "Traceback" not in err
    assert (out / "model.safetensors").read_bytes() == first  # unchanged

    assert main(["export", "--format", "vllm", "--overwrite", str(drafts["beagle"]), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BeagleDraftForCausalLM"]
    assert (tmp_path / "out.old" / "keep").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "out.old"]  # no temporaries left

    (tmp_path / "empty").mkdir()  # an empty folder is fine without --overwrite
    assert main(["export", "--format", "beagle", str(drafts["beagle"]), str(tmp_path / "empty")]) == 0


@pytest.mark.parametrize("case", ["file-out", "not-a-draft", "missing", "same-folder", "dtype"])
def test_cli_bad_input_is_one_line_exit_2(drafts, tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    argv = {
        "file-out": ["--format", "vllm", str(drafts["beagle"]), str(tmp_path / "file")],
        "not-a-draft": ["--format", "vllm", str(tmp_path / "junk"), str(tmp_path / "o")],
        "missing": ["--format", "vllm", str(tmp_path / "nowhere"), str(tmp_path / "o")],
        "same-folder": ["--format", "beagle", "--overwrite", str(drafts["beagle"]), str(drafts["beagle"])],
        "dtype": ["--format", "beagle", "--dtype", "int8", str(drafts["beagle"]), str(tmp_path / "o")],
    }[case]
    if case == "dtype":  # argparse: usage, then the one error line, status 2
        with pytest.raises(SystemExit) as exited:
            main(["export", *argv])
        assert exited.value.code == 2
        assert "invalid choice: 'int8'" in capsys.readouterr().err.strip().splitlines()[-1]
    else:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists() and (tmp_path / "file").read_text() == "x"
    assert (drafts["beagle"] / "model.safetensors").is_file()


def test_draft_vocabulary_is_refused_for_vllm(target, tmp_path):
    from beagle.vocab.core import DraftVocab

    draft = build_draft(target, "beagle")
    draft.set_vocab(DraftVocab(ids=torch.arange(0, 40)))
    save_draft(draft, tmp_path / "vocab-draft")
    with pytest.raises(Exception, match="draft vocabulary"):
        export_draft(tmp_path / "vocab-draft", tmp_path / "o", format="vllm")
    resaved = export_draft(tmp_path / "vocab-draft", tmp_path / "o2", format="beagle", dtype="bfloat16")
    assert load_draft(resaved).vocab.size == 40


def test_plugin_module_imports_without_vllm():
    import beagle.integrations.vllm as plugin

    assert plugin.MODEL_CLASS.startswith("beagle.integrations.vllm_model:")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="needs vLLM"):
            plugin.register()
