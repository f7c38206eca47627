"""Shared fixtures: tiny randomly initialised targets (Llama, Qwen2, Qwen3, Mistral) built in code."""

from __future__ import annotations

import pytest
import torch

from beagle.kernels.cpu_kernels import install_cpu_kernels
from beagle.kernels.cpu_linear import current_kernel
from beagle.target_model.model import TargetModel

TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
)
FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def make_tiny_target(family: str = "llama", vocab_size: int = 97, seed: int = 0, **overrides) -> TargetModel:
    """A random tiny HF causal LM of the given family, fp32 on CPU, wrapped as a TargetModel, with the CPU kernels
    load_target installs (the process's current kernel, so tests inside ``use_kernel`` get that one)."""
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }
    config_class, model_class = classes[family]
    torch.manual_seed(seed)
    config = config_class(vocab_size=vocab_size, **{**TINY, **overrides})
    if family == "qwen3":
        config.head_dim = 16
    model = model_class(config).float().eval()
    target = TargetModel(model, tokenizer=None, name=f"tiny-{family}")
    install_cpu_kernels(target, current_kernel())
    return target


@pytest.fixture(params=FAMILIES)
def tiny_target(request) -> TargetModel:
    return make_tiny_target(request.param)


@pytest.fixture
def llama_target() -> TargetModel:
    return make_tiny_target("llama")
