"""vLLM tests (the folder is not named ``vllm``: on sys.path it would shadow the package): real vLLM on the CPU (no mocks), SmolLM2-135M-Instruct fp32 as the target, the shipped drafts
exported with `beagle export --format vllm`. Skipped where vLLM is not installed (the main suite's
environment); `.ci/vllm` builds the environment and runs them.

Kept small for 2 cores: eager mode, 1 GiB of KV cache, one engine at a time, in-process (no engine-core
or worker processes; `vllm serve` in test_serve.py runs as a real separate server)."""

from __future__ import annotations

import gc
import os

import pytest

# Each test module skips itself without vLLM (pytest.importorskip); nothing here imports vLLM at import time.
VLLM_MISSING = "vLLM is not installed here (run .ci/vllm for the vLLM tests)"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc with a function
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTIONS = [
    "What is the capital of France? Answer in one sentence, then name two famous sights there.",
    "Write a short poem about the sea.",
    "Explain in three sentences how a bicycle works.",
]
MAX_TOKENS = 64
SPECULATIVE_TOKENS = 4


@pytest.fixture(scope="session")
def target_path() -> str:
    from beagle.assets.registry import fetch_asset

    return str(fetch_asset("smollm2"))


@pytest.fixture(scope="session")
def tokenizer(target_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target_path)


@pytest.fixture(scope="session")
def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False) for q in QUESTIONS]


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@pytest.fixture(scope="session")
def hf_greedy(target_path, prompt_ids, tokenizer) -> list[list[int]]:
    """HF transformers greedy continuations (fp32), cut after the first EOS."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target_path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            generated = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
            out.append(_until_eos(generated[0, len(ids):].tolist(), tokenizer.eos_token_id))
    del model
    gc.collect()
    return out


@pytest.fixture(scope="session")
def skip_draft_folder(tmp_path_factory) -> str:
    """The shipped Beagle draft with the last-state skip added and given small random weights (seed 0)."""
    import torch

    from beagle.models.checkpoint import load_draft, save_draft

    draft = load_draft("smollm2-beagle").enable_last_state_skip()
    torch.manual_seed(0)
    with torch.no_grad():
        torch.nn.init.normal_(draft.skip.weight, std=0.01)
    return str(save_draft(draft, tmp_path_factory.mktemp("skip-draft") / "beagle-skip"))


@pytest.fixture(scope="session")
def exported(tmp_path_factory, target_path, skip_draft_folder) -> dict[str, str]:
    """Exports for vLLM: eagle2, beagle (shipped) and beagle-skip (Beagle with the last-state skip)."""
    from beagle.integrations.export import export_draft

    root = tmp_path_factory.mktemp("vllm-drafts")
    sources = {"eagle2": "smollm2-eagle2", "beagle": "smollm2-beagle", "beagle-skip": skip_draft_folder}
    return {name: str(export_draft(source, root / name, format="vllm", target=target_path))
            for name, source in sources.items()}


def make_llm(target_path: str, draft: str | None, **overrides):
    from vllm import LLM

    spec = ({"method": "eagle", "model": draft, "num_speculative_tokens": SPECULATIVE_TOKENS}
            if draft is not None else None)
    settings = dict(model=target_path, dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=8,
                    speculative_config=spec, seed=0, disable_log_stats=False, distributed_executor_backend="uni")
    settings.update(overrides)
    return LLM(**settings)


def close_llm(llm) -> None:
    """Free one in-process engine before the next is built (one at a time on this machine)."""
    from vllm.distributed import cleanup_dist_env_and_memory

    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 — best effort; the process group is cleaned below either way
        pass
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


def greedy_ids(llm, prompt_ids, eos: int, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    from vllm import SamplingParams

    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids],
                           SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return [_until_eos(list(output.outputs[0].token_ids), eos) for output in outputs]


def spec_metrics(llm) -> dict:
    """{'drafts', 'draft_tokens', 'accepted', 'per_position', 'acceptance_length'} from llm.get_metrics()."""
    values = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode"):
            values[metric.name.removeprefix("vllm:spec_decode_")] = getattr(metric, "value", None) or \
                getattr(metric, "values", None)
    drafts = values.get("num_drafts", 0) or 0
    accepted = values.get("num_accepted_tokens", 0) or 0
    return {"drafts": drafts, "draft_tokens": values.get("num_draft_tokens", 0), "accepted": accepted,
            "per_position": values.get("num_accepted_tokens_per_pos"),
            "acceptance_length": 1 + accepted / drafts if drafts else None}
