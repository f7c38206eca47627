"""Each exported draft inside vLLM (its EAGLE proposer, chain of 4): greedy output unchanged, acceptance > 1,
the draft's forward in vLLM equal to ours on the same inputs, sampling at T=1 runs. ``beagle-skip`` is the
shipped Beagle draft with the last-state skip (small random weights), so the plugin's skip path is checked."""

from __future__ import annotations

import pytest
import torch

from tests.with_vllm.conftest import SPECULATIVE_TOKENS, VLLM_MISSING, close_llm, greedy_ids, make_llm, spec_metrics

pytest.importorskip("vllm", reason=VLLM_MISSING)


def _install_capture(worker):
    """In vLLM's worker: record the drafter's first forward call (inputs and outputs)."""
    model = worker.model_runner.drafter.model
    worker._beagle_calls = []

    def hook(module, args, kwargs, output):
        if len(worker._beagle_calls) < 1:
            inputs = dict(zip(("input_ids", "positions", "hidden_states"), args))
            inputs.update({key: kwargs[key] for key in ("input_ids", "positions", "hidden_states") if key in kwargs})
            first = output[0] if isinstance(output, tuple) else output
            worker._beagle_calls.append({**{k: v.detach().clone().cpu() for k, v in inputs.items()},
                                         "output": first.detach().clone().cpu()})

    model.register_forward_hook(hook, with_kwargs=True)
    return type(model).__name__


def _captured(worker):
    return worker._beagle_calls


@pytest.fixture(scope="module", params=["eagle2", "beagle", "beagle-skip"])
def engine(request, target_path, exported):
    llm = make_llm(target_path, exported[request.param])
    classes = llm.collective_rpc(_install_capture)
    yield request.param, llm, classes[0]
    close_llm(llm)


@pytest.fixture(scope="module")
def ours(target_path, skip_draft_folder):
    """Our drafts in fp32, bound to the HF target (for the forward comparison)."""
    from beagle.models.checkpoint import load_draft
    from beagle.target_model.model import load_target

    target = load_target(target_path, dtype="float32", device="cpu")
    sources = {"eagle2": "smollm2-eagle2", "beagle": "smollm2-beagle", "beagle-skip": skip_draft_folder}
    return {name: load_draft(source, target=target, dtype=torch.float32) for name, source in sources.items()}


def test_greedy_unchanged_and_drafts_accepted(engine, prompt_ids, hf_greedy, tokenizer):
    arch, llm, model_class = engine
    assert model_class == {"eagle2": "EagleLlamaForCausalLM", "beagle": "BeagleDraftForCausalLM",
                           "beagle-skip": "BeagleDraftForCausalLM"}[arch]
    assert greedy_ids(llm, prompt_ids, tokenizer.eos_token_id) == hf_greedy
    metrics = spec_metrics(llm)
    print(f"{arch}: {metrics}")
    assert metrics["drafts"] > 0 and metrics["draft_tokens"] == SPECULATIVE_TOKENS * metrics["drafts"]
    assert metrics["acceptance_length"] > 1.2


def test_draft_forward_in_vllm_equals_ours(engine, ours, prompt_ids):
    """The first drafter call (prefill of the batch above): split into requests where positions restart at 0,
    each compared with our forward on the same token ids and target states."""
    arch, llm, _ = engine
    calls = llm.collective_rpc(_captured)[0]
    assert calls, "the drafter was never called"
    call = calls[0]
    positions, ids, hidden, out = call["positions"], call["input_ids"], call["hidden_states"], call["output"]
    starts = (positions == 0).nonzero().flatten().tolist() + [positions.shape[0]]
    assert len(starts) - 1 == len(prompt_ids)
    draft = ours[arch]
    with torch.no_grad():
        for begin, end in zip(starts, starts[1:]):
            length = end - begin
            assert ids[begin:end - 1].tolist() == prompt_ids[starts.index(begin)][1:]  # slot i holds x_{i+1}
            tokens, states = ids[begin:end][None], hidden[begin:end][None].float()
            causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
            if arch == "eagle2":
                expected = draft(tokens, states, causal)[0]
            else:
                slots = torch.arange(length)[None]
                keys, values = draft.project_states(states, slots)
                # the newest state the query of slot i sees is h_i, its own slot's (read by the skip only)
                expected = draft.decode(tokens, slots + 1, keys, values, causal, states)[0]
            torch.testing.assert_close(out[begin:end].float(), expected, atol=1e-4, rtol=1e-4)


def test_sampling_at_temperature_one_runs(engine, prompt_ids):
    from vllm import SamplingParams

    arch, llm, _ = engine
    before = spec_metrics(llm)["drafts"]
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids],
                           SamplingParams(temperature=1.0, top_p=1.0, max_tokens=24, seed=7), use_tqdm=False)
    for output in outputs:
        tokens = list(output.outputs[0].token_ids)
        assert 0 < len(tokens) <= 24 and all(0 <= token < 49152 for token in tokens)
    assert spec_metrics(llm)["drafts"] > before
