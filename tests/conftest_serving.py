"""A tiny random chat target (Llama + word-level ChatML tokenizer) for the serving / chat / demo tests.

Imported by the test modules (pytest puts ``tests/`` on ``sys.path``); not a pytest conftest.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

WORDS = (
    "system user assistant hello world the a an of to and in is it you that was for on are with as his they be at "
    "one have this from or had by hot word but what some we can out other were all there when up use your how said "
    "each she which do their time if will way about many then them write would like so these her long make thing see "
    "him two has look more day could go come did number sound no most people my over know water than call first who "
    "may down side been now find any new work part take get place made live where after back little only round man "
    "year came show every good me give our under name very through just form sentence great think say help low line"
).split()

SPECIALS = ["[UNK]", "<|im_start|>", "<|im_end|>"]
CONTEXT = 512


@contextmanager
def one_torch_thread():
    """Tiny models on a shared 2-core machine run ~40x faster on one intra-op thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def subprocess_env() -> dict:
    """Environment for `python -m beagle.cli.main ...` subprocesses: src on the path, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML,
    )
    return tokenizer


def build_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=vocab_size,
        max_position_embeddings=CONTEXT,
        initializer_range=0.1,  # larger than Llama's 0.02 so different prompts get different replies
        eos_token_id=SPECIALS.index("<|im_end|>"),
        bos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # Never choose EOS / special tokens, so replies run to max_tokens (finish_reason "length")
        # unless a stop string ends them; random weights otherwise.
        model.lm_head.weight[: len(SPECIALS)] = 0.0
    return model


@lru_cache(maxsize=1)
def tiny_parts():
    """(model, tokenizer), built once per test process."""
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    return model, tokenizer


def tiny_target():
    from beagle.target_model.model import TargetModel

    model, tokenizer = tiny_parts()
    return TargetModel(model, tokenizer, name="tiny-chat")


def tiny_draft(target, seed: int = 1):
    import torch

    from beagle.models.checkpoint import build_draft

    torch.manual_seed(seed)
    return build_draft(target, "beagle").eval()


def small_tree():
    from beagle.decoding.tree import TreeSettings

    return TreeSettings(depth=3, top_k=4, total_tokens=10)


def save_tiny_target(directory) -> str:
    """Write the tiny target (weights + tokenizer) as an HF folder; returns its path."""
    model, tokenizer = tiny_parts()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
