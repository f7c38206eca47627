"""Random-weight Llama-shaped targets for the scale checks (round_cost.py, train_memory.py)."""

from __future__ import annotations

import torch

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                         vocab_size=128256, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    # SmolLM2-135M: for calibrating the training budget of `driver.py train`
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                    vocab_size=49152, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
}


def random_target(shape: str, layers: int, device: str, dtype: torch.dtype):
    """A TargetModel of ``shape`` (see SHAPES) with ``layers`` decoder layers, random weights (seed 0),
    built directly on ``device`` in ``dtype``; frozen, no tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from beagle.target_model.model import TargetModel

    config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=8192, **SHAPES[shape])
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return TargetModel(model, None, name=f"{shape}-shaped-random")
