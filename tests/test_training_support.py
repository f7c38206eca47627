"""Shared helpers for the training tests: tiny targets, tokenizers with chat templates, data files.

(Named test_*.py so it lives beside the tests it serves; it holds no tests itself.)
"""

from __future__ import annotations

import json
import random

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ '<<SYS>> ' + message['content'] + ' <</SYS>> ' }}"
    "{% endif %}{% endfor %}"
)

SPECIALS = ["[UNK]", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]
WORDS = ["user", "assistant", "system", "You", "are", "helpful"] + [f"w{i}" for i in range(40)]


def tiny_tokenizer(template: str = CHATML_TEMPLATE):
    """A word-level fast tokenizer (whitespace split) with special tokens and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        bos_token="<s>",
        eos_token="<|im_end|>" if template == CHATML_TEMPLATE else "</s>",
        pad_token="[UNK]",
        additional_special_tokens=[t for t in SPECIALS if t not in ("[UNK]", "<s>")],
    )
    tokenizer.chat_template = template
    return tokenizer


def tiny_model(vocab_size: int, seed: int = 0, hidden_size: int = 64, initializer_range: float = 0.02):
    """A random 2-layer Llama; a larger ``initializer_range`` gives more varied greedy text (and EOS now and then)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=2 * hidden_size, vocab_size=vocab_size, max_position_embeddings=512,
                         bos_token_id=3, eos_token_id=2, pad_token_id=0, initializer_range=initializer_range)
    return LlamaForCausalLM(config)


def tiny_target(vocab_size: int = 97, seed: int = 0, tokenizer=None, initializer_range: float = 0.02):
    from beagle.target_model.model import TargetModel

    return TargetModel(tiny_model(vocab_size, seed, initializer_range=initializer_range), tokenizer=tokenizer,
                       name="tiny")


def tiny_chat_target(seed: int = 0, initializer_range: float = 0.02):
    tokenizer = tiny_tokenizer()
    return tiny_target(len(tokenizer), seed, tokenizer, initializer_range)


def sentence(rng: random.Random, low: int = 3, high: int = 9) -> str:
    return " ".join(f"w{rng.randrange(40)}" for _ in range(rng.randint(low, high)))


def conversations(count: int, seed: int = 0, turns: int = 2) -> list[dict]:
    """OpenAI-format conversations over the tiny vocabulary."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        messages = []
        for _ in range(rng.randint(1, turns)):
            messages.append({"role": "user", "content": sentence(rng)})
            messages.append({"role": "assistant", "content": sentence(rng, 6, 16)})
        records.append({"messages": messages})
    return records


def pretokenized(count: int, vocab_size: int = 97, seed: int = 0, low: int = 20, high: int = 48) -> list[dict]:
    """Pre-tokenized records with learnable (periodic) token patterns and a user/assistant split."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        length = rng.randint(low, high)
        period = [rng.randrange(vocab_size) for _ in range(rng.randint(3, 6))]
        ids = (period * (length // len(period) + 1))[:length]
        prompt = rng.randint(2, 6)
        records.append({"input_ids": ids, "loss_mask": [0] * prompt + [1] * (length - prompt)})
    return records


def write_jsonl(path, records) -> str:
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return str(path)
