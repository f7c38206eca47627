"""Every sampling value is safe (issue 27): a tiny or denormal top_p decodes greedily (its limit) instead of
a NaN distribution, a top_k beyond the vocabulary is off, top_p 1 is plain sampling — in the library, the
CLI and the server alike; and the Host header is parsed strictly."""

from __future__ import annotations

import json

import pytest
import torch

from beagle.cli.main import main
from beagle.decoding.engine import SpeculativeGenerator
from beagle.decoding.sampling import choose_on_device
from beagle.decoding.sampling import GenerationSettings, choose_tokens, target_probabilities
from beagle.errors import BeagleError
from conftest_serving import one_torch_thread, save_tiny_target, small_tree, tiny_draft, tiny_target

TINY_TOP_P = (1e-38, 1e-50, 1e-300, 5e-324)  # the last three are 0 in float32
MODEL = "tiny-chat"


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def sampling(top_p=1.0, top_k=0, seed=3, tokens=8) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=tokens, temperature=1.0, top_p=top_p, top_k=top_k, seed=seed,
                              ignore_eos=True).validate()


# ------------------------------------------------------------------ the distribution
@pytest.mark.parametrize("top_p", TINY_TOP_P)
def test_a_tiny_top_p_keeps_only_the_most_probable_token(top_p):
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    probabilities = target_probabilities(logits, sampling(top_p))
    assert torch.equal(probabilities, torch.nn.functional.one_hot(logits.argmax(-1), 40).float())
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(choose_tokens(logits, sampling(top_p), generator), logits.argmax(-1))
    assert torch.equal(choose_on_device(logits, sampling(top_p), torch.rand(5, generator=generator)),
                       logits.argmax(-1))


def test_top_p_one_and_top_k_beyond_the_vocabulary_are_plain_sampling():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    plain = logits.softmax(-1)
    for settings in (sampling(1.0), sampling(top_k=40), sampling(top_k=41), sampling(top_k=2**70)):
        assert torch.allclose(target_probabilities(logits, settings), plain)
    assert (target_probabilities(logits, sampling(top_k=1)) > 0).sum(-1).tolist() == [1, 1, 1]


@pytest.mark.parametrize("field, value", [("top_p", 0.0), ("top_p", -1e-300), ("top_p", 1.0000001),
                                          ("top_p", float("nan")), ("top_p", "0.5"), ("top_k", -1),
                                          ("top_k", 2.5), ("top_k", True)])
def test_values_outside_the_range_are_one_line_errors(field, value):
    with pytest.raises(BeagleError, match=field):
        GenerationSettings(**{field: value}).validate()


@pytest.mark.parametrize("speculative", [False, True])
def test_a_tiny_top_p_generates_the_greedy_text(speculative):
    target = tiny_target()
    generator = SpeculativeGenerator(target, tiny_draft(target), small_tree()) if speculative \
        else SpeculativeGenerator(target)
    prompt = target.encode("hello world the")
    greedy = generator.generate(prompt, GenerationSettings(max_new_tokens=8, ignore_eos=True)).token_ids
    for top_p in TINY_TOP_P:
        assert generator.generate(prompt, sampling(top_p)).token_ids == greedy


# ------------------------------------------------------------------ the CLI
def test_cli_generate_with_a_tiny_top_p_prints_the_greedy_text(tmp_path, capsys):
    target = save_tiny_target(tmp_path / "target")
    command = ["generate", "--target", target, "--prompt", "hello world", "--max-new-tokens", "6", "--device", "cpu",
               "--json"]
    assert main(command) == 0
    greedy = json.loads(capsys.readouterr().out)["token_ids"]
    for top_p in ("1e-300", "1e-50"):
        assert main([*command, "--temperature", "1", "--top-p", top_p, "--seed", "1"]) == 0
        assert json.loads(capsys.readouterr().out)["token_ids"] == greedy
    assert main([*command, "--temperature", "1", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def client():
    from starlette.testclient import TestClient

    from beagle.serving.app import create_app

    with one_torch_thread():
        app = create_app(SpeculativeGenerator(tiny_target()), MODEL, 16)
        with TestClient(app, base_url="http://127.0.0.1:8000") as http:
            yield http


def test_the_server_answers_a_tiny_top_p_with_the_greedy_text(client):
    for path, body in (("/v1/completions", {"prompt": "hello world"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello world"}]})):
        body = {**body, "max_tokens": 6}
        greedy = client.post(path, json={**body, "temperature": 0})
        assert greedy.status_code == 200, greedy.text
        for top_p in (1e-50, 1e-300, 5e-324):
            reply = client.post(path, json={**body, "temperature": 1, "top_p": top_p, "seed": 5})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0] == greedy.json()["choices"][0]
        assert client.post(path, json={**body, "temperature": 1, "top_k": 10**30}).status_code == 200
        assert client.post(path, json={**body, "temperature": 1, "top_p": 1}).status_code == 200
        for bad in ({"top_p": 0}, {"top_p": 1e-400}, {"top_k": -1}, {"top_p": 1.5}):
            assert client.post(path, json={**body, **bad}).status_code == 422, bad


def test_the_host_header_is_parsed_strictly(client):
    assert client.get("/health").status_code == 200
    for host in ("127.0.0.1:8000, evil.com", "evil.com, 127.0.0.1:8000", "127.0.0.1:8000 evil.com",
                 "user@127.0.0.1:8000", "127.0.0.1:8000/x", "127.0.0.1:99999", "127.0.0.1:", "[127.0.0.1]",
                 "localhost:8000\tevil.com"):
        reply = client.get("/health", headers={"Host": host})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "host_not_allowed", host
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST.:80", "[::1]:8000"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host
    two = client.get("/health", headers=[("Host", "127.0.0.1:8000"), ("Host", "evil.com")])
    assert two.status_code == 400
