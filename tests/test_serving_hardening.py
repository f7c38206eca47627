"""The server against hostile clients: body limits, work off the event loop, sampling edge cases, the
request guard (API key everywhere, JSON only, Host check), idle connections and a prompt shutdown."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest_serving import CONTEXT, one_torch_thread, save_tiny_target, subprocess_env, tiny_target

uvicorn = pytest.importorskip("uvicorn")

MODEL = "tiny-chat"
KEY = "k-hardening"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 4, "temperature": 0}
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Running:
    """An app served by beagle.serving.server (idle timeouts, graceful shutdown) on a background thread."""

    def __init__(self, app, idle_timeout: float = 15.0):
        from beagle.serving.server import graceful_server

        self.port = free_port()
        self.server = graceful_server(app, "127.0.0.1", self.port, log_level="warning", idle_timeout=idle_timeout)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class SlowTokenizingTarget:
    """The tiny target, but tokenizing a chat takes ``delay`` seconds (a huge prompt on a slow tokenizer)."""

    def __init__(self, inner, delay: float):
        self.inner = inner
        self.delay = delay

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_chat(self, messages, **kwargs):
        time.sleep(self.delay)
        return self.inner.encode_chat(messages, **kwargs)


class Generator:
    """A SpeculativeGenerator stand-in: the real one, seen through another target (and optionally slowed)."""

    def __init__(self, inner, target=None, chunk_delay: float = 0.0):
        self.inner = inner
        self.target = target or inner.target
        self.chunk_delay = chunk_delay

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stream(self, prompt_ids, settings):
        for piece in self.inner.stream(prompt_ids, settings):
            time.sleep(self.chunk_delay)
            yield piece


@pytest.fixture(scope="module")
def plain():
    from beagle.decoding.engine import SpeculativeGenerator

    with one_torch_thread():
        yield SpeculativeGenerator(tiny_target())


def make_app(generator, **options):
    from beagle.serving.app import create_app

    return create_app(generator, MODEL, 64, **options)


@pytest.fixture(scope="module")
def keyed(plain):
    """A server with an API key and a 64 KiB body limit."""
    with Running(make_app(plain, api_key=KEY, max_body_bytes=64 * 1024)) as server:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
            yield http


def message(response) -> str:
    return response.json()["error"]["message"]


# ------------------------------------------------------------------------ 1. one large request
def test_a_body_over_the_limit_gets_413(keyed):
    huge = json.dumps({**CHAT, "messages": [{"role": "user", "content": "hello " * 200_000}]}).encode()
    response = keyed.post("/v1/chat/completions", content=huge, headers=JSON)  # declared Content-Length
    assert response.status_code == 413 and "65536 bytes" in message(response)

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(huge), 16384):
            yield huge[start:start + 16384]

    response = keyed.post("/v1/chat/completions", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert keyed.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_tokenizing_does_not_block_other_requests(plain):
    slow = Generator(plain, target=SlowTokenizingTarget(plain.target, delay=1.5))
    with Running(make_app(slow)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        replies = {}
        post = threading.Thread(target=lambda: replies.update(chat=http.post("/v1/chat/completions", json=CHAT)))
        post.start()
        time.sleep(0.3)  # the chat request is being tokenized now
        started = time.monotonic()
        assert http.get("/health").status_code == 200
        health_s = time.monotonic() - started
        post.join(30)
    assert replies["chat"].status_code == 200
    assert health_s < 0.5, f"/health waited {health_s:.2f} s behind a tokenization"


class RecordingTokenizer:
    """Wraps a tokenizer and records the length of every text it tokenizes."""

    def __init__(self, inner):
        self.inner = inner
        self.lengths: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.inner(text, **kwargs)


def test_a_prompt_far_over_the_context_is_refused_after_a_prefix():
    from beagle.errors import PromptTooLongError
    from beagle.target_model.model import TargetModel
    from conftest_serving import tiny_parts

    model, tokenizer = tiny_parts()
    recorder = RecordingTokenizer(tokenizer)
    target = TargetModel(model, recorder, name="tiny-chat")
    text = "hello world " * 100_000  # 1.2M characters, 200k tokens
    with pytest.raises(PromptTooLongError) as caught:
        target.encode_chat([{"role": "user", "content": text}], limit=CONTEXT - 1)
    assert caught.value.tokens >= CONTEXT and not caught.value.exact
    assert max(recorder.lengths) < 10_000  # a prefix, not the 1.2M characters
    # prompts that fit are tokenized whole and exactly, even at many characters per token
    long_words = " ".join(["x" * 40] * 50)  # 50 unknown words of 40 letters: > 8 characters per token
    assert target.encode(long_words, limit=60) == target.encode(long_words)
    with pytest.raises(PromptTooLongError) as caught:
        target.encode(long_words, limit=49)
    assert caught.value.exact and caught.value.tokens == len(target.encode(long_words))


def test_the_server_refuses_a_huge_prompt_as_too_long(plain):
    with Running(make_app(plain)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        body = {**CHAT, "messages": [{"role": "user", "content": "hello world " * 150_000}]}  # 1.8 MB
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 400 and "context" in message(response)
        response = http.post("/v1/completions", json={"model": MODEL, "prompt": "the world " * 150_000,
                                                      "max_tokens": 2})
        assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


# ------------------------------------------------------------------------ 2. sampling parameters
def test_a_tiny_temperature_decodes_greedily_and_huge_seeds_are_refused(keyed):
    greedy = keyed.post("/v1/chat/completions", json={**CHAT, "max_tokens": 8})
    for temperature in (1e-40, 1e-30, 5e-6):
        tiny = keyed.post("/v1/chat/completions", json={**CHAT, "max_tokens": 8, "temperature": temperature})
        assert tiny.status_code == 200, tiny.text
        assert tiny.json()["choices"][0]["message"]["content"] == greedy.json()["choices"][0]["message"]["content"]
    for seed in (2**64, -(2**63) - 1, 10**30):
        response = keyed.post("/v1/chat/completions", json={**CHAT, "temperature": 0.7, "seed": seed})
        assert response.status_code == 400 and "seed" in message(response), response.text
    for seed in (2**64 - 1, -1):
        assert keyed.post("/v1/chat/completions", json={**CHAT, "temperature": 0.7, "seed": seed}).status_code == 200
    for raw in (b'{"temperature": NaN', b'{"temperature": Infinity'):  # not JSON numbers: 4xx, never 500
        body = raw + b', "model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}'
        assert 400 <= keyed.post("/v1/chat/completions", content=body, headers=JSON).status_code < 500


def test_generation_settings_validation():
    import math

    from beagle.decoding.sampling import GenerationSettings
    from beagle.errors import BeagleError

    for bad in (dict(temperature=math.nan), dict(temperature=math.inf), dict(temperature=-1e-9),
                dict(temperature=1.0, seed=2**64), dict(seed=-(2**63) - 1), dict(seed=1.5), dict(seed=True)):
        with pytest.raises(BeagleError):
            GenerationSettings(**bad).validate()
    assert GenerationSettings(temperature=1e-40).validate().greedy
    assert not GenerationSettings(temperature=1e-4).validate().greedy
    GenerationSettings(temperature=1.0, seed=2**64 - 1).validate()
    GenerationSettings(temperature=1.0, seed=-(2**63)).validate()


def test_a_tiny_temperature_samples_nothing_but_the_greedy_tokens(plain):
    from beagle.decoding.sampling import GenerationSettings

    ids = plain.target.encode("the people")
    greedy = plain.generate(ids, GenerationSettings(max_new_tokens=12)).token_ids
    tiny = plain.generate(ids, GenerationSettings(max_new_tokens=12, temperature=1e-40, seed=3)).token_ids
    assert tiny == greedy


# ------------------------------------------------------------------------ 7. web exposure
def test_the_api_key_guards_every_path(keyed):
    with httpx.Client(base_url=str(keyed.base_url), timeout=30) as anonymous:
        for method, path in (("GET", "/nothing"), ("POST", "/v1/nothing"), ("GET", "/v1/chat/completions"),
                             ("OPTIONS", "/v1/chat/completions"), ("DELETE", "/health"), ("GET", "/docs")):
            response = anonymous.request(method, path)
            assert response.status_code == 401, (method, path, response.status_code)
            assert "API key" in message(response)
    assert keyed.get("/nothing").status_code == 404  # with the key: the usual answer


def test_bodies_must_be_json(keyed):
    raw = json.dumps(CHAT)
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"},
                    {"Content-Type": "multipart/form-data; boundary=x"}, {}):
        response = keyed.post("/v1/chat/completions", content=raw, headers=headers)
        assert response.status_code == 415, (headers, response.text)
        assert "application/json" in message(response)
    ok = keyed.post("/v1/chat/completions", content=raw, headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert ok.status_code == 200


def test_the_host_header_must_name_this_server(plain):
    with Running(make_app(plain, allowed_hosts=["beagle.internal"])) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for host in ("attacker.example", "attacker.example:%d" % server.port, "127.0.0.1.nip.io"):
                response = http.get("/health", headers={"Host": host})
                assert response.status_code == 400, host
                assert "--allowed-host" in message(response)
                response = http.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
                assert response.status_code == 400
            for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "LOCALHOST", f"[::1]:{server.port}",
                         "beagle.internal:8000"):
                assert http.get("/health", headers={"Host": host}).status_code == 200, host


def test_host_policy_by_bound_address():
    from beagle.serving.guard import HostPolicy

    loopback = HostPolicy.for_bind("127.0.0.1")
    assert loopback.allows("localhost:8000") and loopback.allows("[::1]") and not loopback.allows("evil.com")
    assert not loopback.allows("10.0.0.5:8000")
    everywhere = HostPolicy.for_bind("0.0.0.0", ["gpu-box.lan"])
    assert everywhere.allows("10.0.0.5:8000") and everywhere.allows("[fe80::1]:80") and everywhere.allows("gpu-box.lan")
    assert not everywhere.allows("rebind.attacker.example")
    specific = HostPolicy.for_bind("10.0.0.5")
    assert specific.allows("10.0.0.5:8000") and not specific.allows("localhost") and not specific.allows("10.0.0.6")
    assert HostPolicy.for_bind("127.0.0.1", ["*"]) is None


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends until it closes the connection; fails after ``seconds``."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except socket.timeout:
        pytest.fail(f"the connection stayed open for {seconds} s (got {received[:200]!r})")
    return received


def test_idle_and_stalled_connections_are_closed(plain):
    with Running(make_app(plain, body_timeout=1.0), idle_timeout=1.0) as server:
        address = ("127.0.0.1", server.port)
        with socket.create_connection(address) as silent:  # connects, sends nothing
            assert _closed_within(silent, 5) == b""
        with socket.create_connection(address) as half:  # half a request head, then silence
            half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert _closed_within(half, 5) == b""
        with socket.create_connection(address) as stalled:  # a body that stops arriving
            stalled.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"")
            reply = _closed_within(stalled, 5)
            assert reply.startswith(b"HTTP/1.1 408")
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # the server is fine


# ------------------------------------------------------------------------ 3. shutdown
SLOW_SERVE = """
import sys, time
from beagle.decoding.engine import SpeculativeGenerator
original = SpeculativeGenerator.stream
def slow(self, *args, **kwargs):
    for piece in original(self, *args, **kwargs):
        time.sleep(0.1)
        yield piece
SpeculativeGenerator.stream = slow
from beagle.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_stops_a_generation_in_flight(tmp_path):
    folder = save_tiny_target(tmp_path / "tiny")
    port = free_port()
    command = [sys.executable, "-c", SLOW_SERVE, "serve", "--target", folder, "--port", str(port),
               "--model-name", MODEL, "--max-tokens-limit", "400", "--log-level", "warning", "--device", "cpu"]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "beagle serve did not come up"
            time.sleep(0.2)
        events: list[str] = []
        body = {**CHAT, "max_tokens": 400, "ignore_eos": True, "stream": True}  # 400 chunks x 0.1 s = 40 s

        def consume():
            with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        while len(events) < 3:
            assert reader.is_alive() and time.monotonic() < deadline + 30
            time.sleep(0.02)
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        exit_s = time.monotonic() - stopped_at
        reader.join(5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert exit_s < 3, f"the server took {exit_s:.1f} s to stop"
    assert events[-1] == "[DONE]"
    assert "shutting down" in json.loads(events[-2])["error"]["message"]
