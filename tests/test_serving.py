"""The OpenAI-compatible server, end to end: a real uvicorn server on localhost with a tiny random
target + random Beagle draft, driven by the official ``openai`` client and raw ``httpx``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest_serving import (
    CONTEXT,
    WORDS,
    one_torch_thread,
    save_tiny_target,
    small_tree,
    subprocess_env,
    tiny_draft,
    tiny_target,
)

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

API_KEY = "test-key"
MODEL = "tiny-chat"
LIMIT = 400  # the server's max_tokens cap


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerThread:
    """uvicorn.Server in a background thread (started / stopped by the test)."""

    def __init__(self, app):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def setup():
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.serving.app import create_app

    with one_torch_thread():
        target = tiny_target()
        draft = tiny_draft(target)
        generator = SpeculativeGenerator(target, draft, small_tree(), adaptive=False)
        reference = SpeculativeGenerator(target)  # plain greedy decoding
        app = create_app(generator, MODEL, LIMIT, api_key=API_KEY)
        with ServerThread(app) as server:
            yield {"server": server, "target": target, "reference": reference, "app": app, "draft": draft}


@pytest.fixture(scope="module")
def client(setup):
    return openai.OpenAI(base_url=setup["server"].base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(setup):
    with httpx.Client(base_url=setup["server"].base_url, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=60) as session:
        yield session


def greedy_chat(setup, content: str, max_tokens: int):
    target = setup["target"]
    ids = target.encode_chat([{"role": "user", "content": content}])
    return ids, setup["reference"].generate(ids, max_new_tokens=max_tokens)


def greedy_text(setup, prompt: str, max_tokens: int):
    target = setup["target"]
    ids = target.encode(prompt)
    return ids, setup["reference"].generate(ids, max_new_tokens=max_tokens)


def assert_server_alive(http):
    response = http.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


# ------------------------------------------------------------------------ happy paths
def test_models_and_health(client, http):
    assert [model.id for model in client.models.list().data] == [MODEL]
    health = http.get("/health").json()
    assert health["model"] == MODEL and health["speculative"] is True
    assert set(health["queue"]) >= {"running", "waiting", "completed", "cancelled"}
    assert http.get(f"/v1/models/{MODEL}").json()["context_length"] == CONTEXT


def test_chat_matches_plain_greedy(setup, client):
    ids, expected = greedy_chat(setup, "hello world how are you", 24)
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello world how are you"}], max_tokens=24, temperature=0
    )
    choice = response.choices[0]
    assert choice.message.content == expected.text
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert response.usage.prompt_tokens == len(ids)
    assert response.usage.completion_tokens == 24
    assert response.usage.total_tokens == len(ids) + 24
    beagle = response.to_dict()["beagle"]
    assert beagle["speculative"] is True
    assert beagle["tau"] >= 1.0 and beagle["target_passes"] >= 1
    assert isinstance(beagle["acceptance_by_depth"], list) and beagle["tokens_per_s"] > 0


def test_chat_streaming_matches_plain_greedy(setup, client):
    ids, expected = greedy_chat(setup, "the people", 20)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "the people"}], max_completion_tokens=20,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.prompt_tokens == len(ids) and usage_chunk.usage.completion_tokens == 20
    assert usage_chunk.to_dict()["beagle"]["target_passes"] >= 1
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_string_gives_finish_reason_stop(setup, client):
    _, full = greedy_chat(setup, "time is long", 24)
    words = full.text.split()
    stop = " " + words[3]  # a word present in the plain output
    expected = full.text[: full.text.find(stop)]
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "time is long"}], max_tokens=24, temperature=0,
        stop=[stop, "never-appears"],
    )
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "time is long"}], max_tokens=24, temperature=0,
        stop=stop, stream=True,
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_match_plain_greedy(setup, client):
    prompt = "water is hot and the sun"
    ids, expected = greedy_text(setup, prompt, 16)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert response.object == "text_completion"
    assert response.choices[0].text == expected.text
    assert response.choices[0].finish_reason == "length"
    assert response.usage.prompt_tokens == len(ids) and response.usage.completion_tokens == 16
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == 16
    # token ids as the prompt
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=16, temperature=0)
    assert by_ids.choices[0].text == expected.text


def test_sampling_settings_reach_the_engine(setup, client):
    from beagle.decoding.engine import SpeculativeGenerator
    from beagle.decoding.sampling import GenerationSettings

    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "first sound"}], max_tokens=12,
                  temperature=0.9, top_p=0.95, seed=7, extra_body={"top_k": 20})
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second and first
    target = setup["target"]
    same = SpeculativeGenerator(target, setup["draft"], small_tree(), adaptive=False).generate(
        target.encode_chat([{"role": "user", "content": "first sound"}]),
        GenerationSettings(max_new_tokens=12, temperature=0.9, top_p=0.95, top_k=20, seed=7))
    assert first == same.text


def test_concurrent_clients_get_their_own_answers(setup, client):
    prompts = ["hello world", "the people", "water is hot", "first sound of the day"]
    expected = {p: greedy_chat(setup, p, 16)[1].text for p in prompts}
    assert len(set(expected.values())) > 1  # the prompts really differ
    results, errors = {}, []

    def ask(index: int, prompt: str):
        try:
            if index % 2:
                stream = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0,
                    stream=True)
                results[prompt] = "".join(c.choices[0].delta.content or "" for c in stream)
            else:
                response = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0)
                results[prompt] = response.choices[0].message.content
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(prompts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert results == expected


# ------------------------------------------------------------------------ bad requests
def _post(http, path: str, body, **kwargs):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return http.post(path, content=content, headers={"Content-Type": "application/json", **kwargs.pop("headers", {})},
                     **kwargs)


def _error(response) -> str:
    body = response.json()
    assert set(body["error"]) >= {"message", "type"}
    assert body["error"]["message"]
    return body["error"]["message"]


GOOD = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b'{"model": "tiny-chat", "messages": [', 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 422, "JSON object"),
        ({**GOOD, "frobnicate": True}, 422, "frobnicate"),
        ({**GOOD, "max_tokens": "many"}, 422, "max_tokens"),
        ({**GOOD, "temperature": "hot"}, 422, "temperature"),
        ({**GOOD, "messages": "hello"}, 422, "messages"),
        ({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, 422, "role"),
        ({"model": MODEL}, 422, "messages"),
        ({**GOOD, "n": 2}, 400, "n=1"),
        ({**GOOD, "max_tokens": LIMIT + 50}, 400, "limit"),
        ({**GOOD, "messages": [{"role": "user", "content": " ".join(WORDS[:10] * 60)}]}, 400, "context"),
        ({**GOOD, "max_tokens": CONTEXT - 5}, 400, "max_tokens"),
        ({**GOOD, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ({**GOOD, "model": "gpt-17"}, 404, "gpt-17"),
        ({**GOOD, "temperature": 5}, 422, "temperature"),
    ],
)
def test_bad_chat_requests_get_4xx_with_a_message(http, body, status, needle):
    response = _post(http, "/v1/chat/completions", body)
    assert response.status_code == status, response.text
    assert needle.lower() in _error(response).lower()
    assert_server_alive(http)


def test_bad_completion_requests(http):
    for body, status in [
        ({"model": MODEL, "prompt": "hi", "max_tokens": 2, "best_of": 3}, 422),
        ({"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2}, 400),
        ({"model": MODEL, "prompt": "", "max_tokens": 2}, 400),
        ({"model": MODEL, "prompt": [10**9], "max_tokens": 2}, 400),
        ({"model": MODEL, "prompt": "hi " * 600, "max_tokens": 2}, 400),
    ]:
        response = _post(http, "/v1/completions", body)
        assert response.status_code == status, response.text
        _error(response)
    assert _post(http, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2}).status_code == 200


def test_api_key_is_required(setup, http):
    base = setup["server"].base_url
    with httpx.Client(base_url=base, timeout=30) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/health")):
                response = anonymous.request(method, path, headers=headers,
                                             content=json.dumps(GOOD) if method == "POST" else None)
                assert response.status_code == 401, (headers, path)
                assert "API key" in _error(response)
    bad_client = openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_client.models.list()
    assert_server_alive(http)


def test_unknown_path_and_method(http):
    assert http.get("/v1/nothing").status_code == 404
    assert "no such endpoint" in _error(http.get("/v1/nothing"))
    assert http.get("/v1/chat/completions").status_code == 405
    assert_server_alive(http)


# ------------------------------------------------------------------------ cancellation
def test_disconnect_mid_stream_frees_the_slot(setup, http, client):
    worker = setup["app"].state.worker
    cancelled_before = worker.state()["cancelled"]
    body = {**GOOD, "max_tokens": LIMIT, "stream": True, "ignore_eos": True}
    with http.stream("POST", "/v1/chat/completions", content=json.dumps(body),
                     headers={"Content-Type": "application/json"}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["object"] == "chat.completion.chunk"
        closed_at = time.monotonic()
    # closing the response drops the connection; the worker stops at the next accepted chunk
    deadline = closed_at + 10
    while worker.state()["cancelled"] == cancelled_before or worker.state()["running"]:
        assert time.monotonic() < deadline, "the abandoned generation kept running"
        time.sleep(0.02)
    freed_after = time.monotonic() - closed_at
    started = time.monotonic()
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0)
    assert response.choices[0].finish_reason == "length"
    assert time.monotonic() - started < 10
    assert freed_after < 5


def test_client_gone_while_queued_is_skipped(setup, http):
    """A non-streaming request whose client times out while another generation runs never runs."""
    worker = setup["app"].state.worker
    before = worker.state()
    body = {**GOOD, "max_tokens": LIMIT, "stream": True, "ignore_eos": True}
    streamed = {}

    def consume():
        with http.stream("POST", "/v1/chat/completions", content=json.dumps(body),
                         headers={"Content-Type": "application/json"}) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        streamed["finish"] = events[-1]["choices"][0]["finish_reason"]
        streamed["beagle"] = events[-1]["beagle"]

    runner = threading.Thread(target=consume)
    runner.start()
    while worker.state()["running"] == 0 and runner.is_alive():
        time.sleep(0.01)
    with pytest.raises(httpx.TimeoutException):
        _post(http, "/v1/chat/completions", {**GOOD, "max_tokens": LIMIT, "ignore_eos": True}, timeout=0.3)
    runner.join(60)
    deadline = time.monotonic() + 10
    while worker.state()["running"] or worker.state()["waiting"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    after = worker.state()
    assert streamed == {"finish": "length", "beagle": streamed["beagle"]}
    assert streamed["beagle"]["new_tokens"] == LIMIT  # the first request was not disturbed
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"] + 2
    assert_server_alive(http)


class FailingGenerator:
    """Delegates to a real generator but fails after ``after`` chunks (an engine bug)."""

    def __init__(self, inner, after: int):
        self.inner = inner
        self.after = after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stream(self, prompt_ids, settings):
        for index, piece in enumerate(self.inner.stream(prompt_ids, settings)):
            if index == self.after:
                raise RuntimeError("boom")
            yield piece


def test_engine_failure_is_reported_and_the_server_survives(setup):
    from beagle.serving.app import create_app

    failing = FailingGenerator(setup["reference"], after=0)
    with one_torch_thread(), ServerThread(create_app(failing, MODEL, LIMIT)) as server:
        broken = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "hello"}]
        with pytest.raises(openai.InternalServerError, match="boom"):
            broken.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
        failing.after = 2  # fails mid-stream: the error arrives as an SSE event
        with pytest.raises(openai.APIError, match="boom"):
            for _ in broken.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                    stream=True):
                pass
        failing.after = 10**6
        response = broken.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
        assert response.choices[0].finish_reason == "length"
        assert httpx.get(server.base_url + "/health").json()["queue"]["completed"] == 3


def test_cli_serve_starts_and_answers(tmp_path):
    folder = save_tiny_target(tmp_path / "tiny")
    port = free_port()
    command = [sys.executable, "-m", "beagle.cli.main", "serve", "--target", folder, "--port", str(port),
               "--model-name", "tiny", "--max-tokens-limit", "32", "--log-level", "warning"]
    env = {**subprocess_env(), "BEAGLE_API_KEY": "env-key"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(base + "/health", headers={"Authorization": "Bearer env-key"}, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "beagle serve did not come up"
            time.sleep(0.2)
        assert httpx.get(base + "/health", timeout=5).status_code == 401
        cli_client = openai.OpenAI(base_url=base + "/v1", api_key="env-key", max_retries=0)
        response = cli_client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0)
        assert response.usage.completion_tokens == 5
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
