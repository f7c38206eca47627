"""Export a draft checkpoint to another layout: ``vllm`` (served by vLLM's EAGLE proposer) or ``beagle``
(the same checkpoint re-saved, e.g. in another dtype). No vLLM needed here.

vLLM layouts (``config.json`` a Llama-style HF config, ``model.safetensors``; the target's embedding and
LM head are never stored, so vLLM shares the target's):

- EAGLE-2 -> vLLM's own EAGLE-1 Llama draft (``EagleLlamaForCausalLM``, ``llama_eagle.py``). Its ``fc`` has
  no bias and ours does; with ``fc(x) = W x + b`` the bias is folded exactly: q/k/v biases ``W_{q,k,v} b``
  (plus ours, if any) and the o_proj bias ``b`` (the residual carries ``b``), ``attention_bias: true``.
  Layer 0 has no input norm in either; our MLP norm is ``post_attention_layernorm``; weights under
  ``layers.0.*``.
- Beagle -> our own weight names with ``architectures: ["BeagleDraftForCausalLM"]``; vLLM asks its model
  registry for ``EagleBeagleDraftForCausalLM``, which the plugin (:mod:`beagle.integrations.vllm`) registers.

The config records where the export came from and the target to serve it with under ``beagle_export``.
Output folders are written atomically: a temporary folder beside OUT, renamed into place when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from beagle.errors import BeagleError
from beagle.files import atomic_folder, destination_path

FORMATS = ("vllm", "beagle")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BEAGLE_VLLM_ARCH = "BeagleDraftForCausalLM"  # vLLM's EAGLE path resolves "Eagle" + this name
EAGLE_VLLM_ARCH = "LlamaForCausalLM"  # -> vLLM's EagleLlamaForCausalLM
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


# ------------------------------------------------------------------ weights
def eagle2_vllm_state_dict(draft) -> dict[str, torch.Tensor]:
    """An :class:`~beagle.models.eagle2.Eagle2Draft`'s weights in vLLM's EAGLE-1 Llama layout, computed in
    float64 and returned in float32 (the fc bias folded into the q/k/v and o_proj biases)."""
    state = {name: tensor.detach().to("cpu", torch.float64) for name, tensor in draft.state_dict().items()}
    size = draft.config.hidden_size
    bias = state.get("fc.bias", torch.zeros(size, dtype=torch.float64))
    out = {"fc.weight": state["fc.weight"]}
    prefix = "layers.0."
    for name in ("q_proj", "k_proj", "v_proj"):
        weight = state[f"self_attn.{name}.weight"]
        folded = weight @ bias
        if f"self_attn.{name}.bias" in state:
            folded = folded + state[f"self_attn.{name}.bias"]
        out[f"{prefix}self_attn.{name}.weight"] = weight
        out[f"{prefix}self_attn.{name}.bias"] = folded
    out[f"{prefix}self_attn.o_proj.weight"] = state["self_attn.o_proj.weight"]
    out[f"{prefix}self_attn.o_proj.bias"] = bias
    out[f"{prefix}post_attention_layernorm.weight"] = state["mlp_norm.weight"]
    for name in ("gate_proj", "up_proj", "down_proj"):
        out[f"{prefix}mlp.{name}.weight"] = state[f"mlp.{name}.weight"]
    return {name: tensor.float() for name, tensor in out.items()}


def beagle_vllm_state_dict(draft) -> dict[str, torch.Tensor]:
    """A Beagle draft's weights for the plugin's model: our own names, float32."""
    return {name: tensor.detach().to("cpu", torch.float32) for name, tensor in draft.state_dict().items()}


def vllm_config(draft, dtype: torch.dtype, target: str | None, source: str) -> dict:
    """The HF (Llama-style) config.json vLLM reads for the exported draft."""
    config = draft.config
    arch = EAGLE_VLLM_ARCH if config.arch == "eagle2" else BEAGLE_VLLM_ARCH
    rope = dict(config.rope_parameters)
    return {
        "architectures": [arch],
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.vocab_size,
        # EAGLE-2: the folded fc bias lives in the attention biases. Beagle: our own q/k/v bias flag.
        "attention_bias": True if config.arch == "eagle2" else config.attention_bias,
        "last_state_skip": config.last_state_skip,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "beagle_export": {
            "arch": config.arch,
            "source": source,
            "target": target if target is not None else config.target.get("name"),
            "target_fingerprint": {key: value for key, value in config.target.items() if key != "weights"},
            "serve": "vllm serve TARGET --speculative-config "
                     "'{\"method\": \"eagle\", \"model\": \"THIS_FOLDER\", \"num_speculative_tokens\": 4}'",
        },
    }


# ------------------------------------------------------------------ folders
def check_destination(out: Path, overwrite: bool) -> None:
    """BeagleError unless OUT can be written: missing, an empty folder, or (with ``overwrite``) a folder."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BeagleError(f"{out} exists and is not a folder; pass another OUT")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BeagleError(f"{out} exists and is not empty; pass --overwrite to replace it, or another OUT")


def write_folder(out: Path, build, overwrite: bool) -> Path:
    """Run ``build(folder)`` on a private temporary folder beside OUT, then swap it into place
    (:func:`beagle.files.atomic_folder`: umask modes, symlinked OUT refused, only OUT itself replaced — when it is
    empty, or with ``overwrite``; nothing else touched)."""
    out = destination_path(out, "OUT")
    check_destination(out, overwrite)
    with atomic_folder(out, "OUT") as temporary:
        build(temporary)
        check_destination(out, overwrite)  # again: something may have appeared meanwhile
    return out


# ------------------------------------------------------------------ entry point
def export_draft(draft_path, out, format: str = "vllm", dtype: str | None = None, target: str | None = None,
                 overwrite: bool = False) -> Path:
    """Export the draft at ``draft_path`` (a checkpoint folder or a shipped name) to OUT.

    format: ``vllm`` (see the module docstring) or ``beagle`` (a plain re-save, e.g. ``dtype="bfloat16"``).
    dtype: the stored weights' dtype (default: the source's for ``beagle``, float32 for ``vllm``). target: the target's path or hub id, recorded
    in a vllm export's config (default: the name the draft records). Returns OUT."""
    from beagle.assets.shipped import resolve_draft_path
    from beagle.models.checkpoint import load_draft

    if format not in FORMATS:
        raise BeagleError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise BeagleError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    source = resolve_draft_path(draft_path)
    out = Path(out)
    check_destination(out, overwrite)  # fail before loading anything
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise BeagleError(f"OUT {out} is the draft folder itself; pass another OUT")
    stored = _stored_dtype(source)
    draft = load_draft(source)  # float32 on the CPU; BeagleError for anything that is not a draft
    # vllm: float32 by default, so the folded EAGLE-2 biases stay exact (vLLM casts to the serving dtype).
    torch_dtype = DTYPES[dtype] if dtype is not None else stored if format == "beagle" else torch.float32
    if format == "beagle":
        return _resave(draft, out, torch_dtype, overwrite)
    if draft.vocab is not None:
        raise BeagleError(f"{source} has a {draft.vocab.size}-token draft vocabulary, which vLLM's EAGLE-1 drafts "
                          "cannot use; export a draft trained on the full vocabulary (no --draft-vocab)")
    state = eagle2_vllm_state_dict(draft) if draft.config.arch == "eagle2" else beagle_vllm_state_dict(draft)
    state = {name: tensor.to(torch_dtype).contiguous() for name, tensor in state.items()}
    config = vllm_config(draft, torch_dtype, target, str(draft_path))

    def build(folder: Path) -> None:
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    return write_folder(out, build, overwrite)


def _resave(draft, out: Path, dtype: torch.dtype, overwrite: bool) -> Path:
    """The draft's own checkpoint layout (config.json, model.safetensors, draft vocabulary if any) in ``dtype``."""
    from beagle.models.checkpoint import CONFIG_NAME as DRAFT_CONFIG
    from beagle.models.checkpoint import WEIGHTS_NAME as DRAFT_WEIGHTS
    from beagle.vocab.core import VOCAB_FILE_NAME

    tensors = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in draft.state_dict().items()}

    def build(folder: Path) -> None:
        save_file(tensors, str(folder / DRAFT_WEIGHTS), metadata={"format": "pt", "arch": draft.config.arch})
        if draft.vocab is not None:
            draft.vocab.save(folder / VOCAB_FILE_NAME)
        draft.config.save(folder / DRAFT_CONFIG)

    return write_folder(out, build, overwrite)


def _stored_dtype(folder: Path) -> torch.dtype:
    """The dtype of the first floating tensor in ``folder/model.safetensors`` (float32 if unreadable: the
    load that follows reports the damage)."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                kind = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(tensor.get_dtype())
                if kind is not None:
                    return kind
    except Exception:  # noqa: BLE001 — load_draft names the problem
        pass
    return torch.float32
