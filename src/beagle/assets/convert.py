"""Convert a llama-architecture GGUF file into a Hugging Face model folder (float32).

The produced folder loads offline with ``AutoModelForCausalLM.from_pretrained(folder)`` and
``AutoTokenizer.from_pretrained(folder)``::

    config.json              LlamaConfig built from the ``llama.*`` metadata
    generation_config.json   bos / eos / pad ids
    model.safetensors        float32 weights, HF names (lm_head omitted when tied)
    tokenizer.json           byte-level BPE rebuilt from ``tokenizer.ggml.*`` with `tokenizers`
    tokenizer_config.json    special tokens + ChatML ``chat_template`` from the GGUF
    beagle_source.json       sha256 of the source GGUF and the converter version

Weight names: ``token_embd`` → ``model.embed_tokens``, ``output_norm`` → ``model.norm``,
``output`` → ``lm_head``, ``blk.N.attn_{q,k,v,output}`` → ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``blk.N.ffn_{gate,up,down}`` → ``model.layers.N.mlp.{gate,up,down}_proj``,
``blk.N.attn_norm`` → ``input_layernorm``, ``blk.N.ffn_norm`` → ``post_attention_layernorm``.

llama.cpp permutes the rows of Q and K (interleaved → half-split rotary layout); this is undone by
:func:`unpermute_qk`. The folder is written to a temporary sibling directory and renamed into place,
so a crash never leaves a half-written folder at ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from beagle.assets.gguf import GGUFReader
from beagle.errors import DataError
from beagle.files import atomic_folder

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1
SOURCE_STAMP = "beagle_source.json"

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")

# ``tokenizer.ggml.pre`` values whose original HF pre-tokenizer splits digits one by one before the
# GPT-2 byte-level regex (SmolLM/StarCoder family), and those that use the plain GPT-2 regex.
_PRE_DIGITS = {"smollm", "starcoder", "refact"}
_PRE_GPT2 = {"gpt2", "default"}
# llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
_SPECIAL_TOKEN_TYPES = {2, 3, 4}


def hf_tensor_name(gguf_name: str) -> str:
    """Map a llama GGUF tensor name to its Hugging Face Llama name (DataError if unknown)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_RE.match(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    raise DataError(f"GGUF tensor {gguf_name!r} has no Llama equivalent; is this a llama-architecture model?")


def unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation.

    ``weight``: ``(out, in)`` (or ``(out,)`` for a bias) with ``out = n_heads * head_dim``. Within
    each head, llama.cpp stores rows as ``[r0, r_half, r1, r_half+1, ...]``-interleaved pairs; HF
    stores the first half of the rotary dims then the second half.
    """
    out = weight.shape[0]
    rest = weight.shape[1:]
    if out % (2 * n_heads):
        raise DataError(f"cannot un-permute a tensor with {out} rows into {n_heads} heads")
    w = weight.reshape(n_heads, out // n_heads // 2, 2, *rest)
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(out, *rest))


def _meta(meta: dict[str, Any], key: str, default: Any = None, required: bool = True) -> Any:
    if key in meta:
        return meta[key]
    if required and default is None:
        raise DataError(f"GGUF metadata lacks {key!r}")
    return default


def build_config(meta: dict[str, Any], has_output: bool) -> dict[str, Any]:
    """LlamaConfig as a JSON dict from ``llama.*`` / ``tokenizer.ggml.*`` metadata."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise DataError(f"GGUF architecture is {arch!r}; only 'llama' can be converted")
    p = "llama."
    hidden = int(_meta(meta, p + "embedding_length"))
    heads = int(_meta(meta, p + "attention.head_count"))
    kv_heads = int(_meta(meta, p + "attention.head_count_kv", heads))
    head_dim = int(meta.get(p + "attention.key_length", meta.get(p + "rope.dimension_count", hidden // heads)))
    vocab = int(meta.get(p + "vocab_size", len(_meta(meta, "tokenizer.ggml.tokens"))))
    rope_theta = float(meta.get(p + "rope.freq_base", 10000.0))
    if any(key.startswith(p + "rope.scaling") for key in meta):
        logger.warning("GGUF declares rope scaling; the converter ignores it (default RoPE is used)")
    bos = meta.get("tokenizer.ggml.bos_token_id")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    pad = meta.get("tokenizer.ggml.padding_token_id", eos)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_meta(meta, p + "feed_forward_length")),
        "num_hidden_layers": int(_meta(meta, p + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int(meta.get(p + "context_length", 2048)),
        "rms_norm_eps": float(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "tie_word_embeddings": not has_output,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "dtype": "float32",
    }


def convert_weights(reader: GGUFReader, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """Dequantise every tensor to float32 ``{hf_name: array (out, in)}``, Q/K rows un-permuted."""
    tensors: dict[str, np.ndarray] = {}
    for name in reader.tensors:
        if name == "rope_freqs.weight":
            continue
        hf_name = hf_tensor_name(name)
        array = reader.tensor(name)
        if ".self_attn.q_proj." in hf_name:
            array = unpermute_qk(array, config["num_attention_heads"])
        elif ".self_attn.k_proj." in hf_name:
            array = unpermute_qk(array, config["num_key_value_heads"])
        tensors[hf_name] = np.ascontiguousarray(array, dtype=np.float32)
    if "model.embed_tokens.weight" not in tensors:
        raise DataError(f"{reader.path}: no token_embd.weight tensor")
    return tensors


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` (byte-level BPE) rebuilt from the ``tokenizer.ggml.*`` metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise DataError(f"GGUF tokenizer model is {model!r}; only byte-level BPE ('gpt2') is supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_DIGITS | _PRE_GPT2:
        raise DataError(
            f"GGUF pre-tokenizer {pre!r} is not supported (known: {', '.join(sorted(_PRE_DIGITS | _PRE_GPT2))})"
        )
    tokens: list[str] = _meta(meta, "tokenizer.ggml.tokens")
    types: list[int] = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in _meta(meta, "tokenizer.ggml.merges")]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise DataError("GGUF tokenizer vocabulary has duplicate tokens")
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False)
    )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in _PRE_DIGITS:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    special = [tok for tok, kind in zip(tokens, types) if kind in _SPECIAL_TOKEN_TYPES]
    tokenizer.add_special_tokens(
        [AddedToken(tok, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False) for tok in special]
    )
    return tokenizer


def build_tokenizer_config(meta: dict[str, Any], max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: special tokens, no automatic BOS/EOS, the GGUF's chat template."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))

    def token(key: str) -> str | None:
        index = meta.get(key)
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    eos = token("tokenizer.ggml.eos_token_id")
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": eos,
        "pad_token": token("tokenizer.ggml.padding_token_id") or eos,
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "added_tokens_decoder": {
            str(i): {"content": tok, "lstrip": False, "rstrip": False, "normalized": False,
                     "single_word": False, "special": True}
            for i, (tok, kind) in enumerate(zip(tokens, types)) if kind in _SPECIAL_TOKEN_TYPES
        },
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert_gguf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], source_sha256: str | None = None) -> Path:
    """Convert ``gguf_path`` (llama architecture) into an HF folder at ``out_dir``; returns ``out_dir``.

    An existing ``out_dir`` is replaced only once the new folder is complete. ``source_sha256`` (if
    known) is recorded in ``beagle_source.json`` so callers can tell which GGUF a folder came from.
    """
    from safetensors.numpy import save_file

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = GGUFReader(gguf_path)
    meta = reader.metadata
    config = build_config(meta, has_output="output.weight" in reader.tensors)
    tokenizer = build_tokenizer(meta)  # fail on an unsupported tokenizer before the heavy work
    with atomic_folder(out_dir, "the converted model folder") as tmp:
        logger.info("converting %s (%d tensors) to %s", gguf_path, len(reader.tensors), out_dir)
        tensors = convert_weights(reader, config)
        n_params = sum(a.size for a in tensors.values())
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        _write_json(tmp / "config.json", config)
        generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                      "pad_token_id": config["pad_token_id"]}
        _write_json(tmp / "generation_config.json", generation)
        tokenizer.save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", build_tokenizer_config(meta, config["max_position_embeddings"]))
        _write_json(tmp / SOURCE_STAMP, {"gguf": gguf_path.name, "gguf_sha256": source_sha256,
                                         "converter_version": CONVERTER_VERSION, "parameters": int(n_params)})
    logger.info("wrote %s (%d parameters)", out_dir, n_params)
    return out_dir


def read_source_stamp(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``beagle_source.json`` of a converted folder, or None when absent/unreadable."""
    try:
        return json.loads((Path(folder) / SOURCE_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
