"""Plain vLLM (no draft) on the CPU decodes SmolLM2 greedily exactly as HF transformers does (fp32)."""

import pytest

from tests.with_vllm.conftest import VLLM_MISSING, close_llm, greedy_ids, make_llm

pytest.importorskip("vllm", reason=VLLM_MISSING)


def test_plain_vllm_greedy_equals_hf(target_path, prompt_ids, hf_greedy, tokenizer):
    llm = make_llm(target_path, None)
    try:
        assert greedy_ids(llm, prompt_ids, tokenizer.eos_token_id) == hf_greedy
    finally:
        close_llm(llm)
