"""The OpenAI-compatible client over real HTTP on loopback: a deliberately misbehaving server (429, 5xx, garbage
JSON, stalls, 401) for retries and errors, and ragtune's own uvicorn server process with the bundled model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ragtune.llm import GenerationConfig, load_llm
from ragtune.llm.openai_backend import AuthenticationError, LLMError, OpenAILLM

FAULTS = ["429", "500", "garbage", "stall", "no-choices", "none"]


class _Faulty(BaseHTTPRequestHandler):
    """Each distinct prompt fails in its own way on its first attempt(s), then answers `echo: PROMPT`."""

    attempts: dict[str, int] = {}
    lock = threading.Lock()
    requests = 0
    mode = "faults"  # or "always500" or "400"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a stalled request, as it should

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.requests += 1
        if self.headers.get("Authorization") != "Bearer good":
            return self._send(401, b'{"error": {"message": "Incorrect API key provided"}}')
        if cls.mode == "always500":
            return self._send(500, b'{"error": "boom"}')
        if cls.mode == "400":
            return self._send(400, b'{"error": {"message": "model not found"}}')
        prompt = body["messages"][-1]["content"]
        with cls.lock:
            n = cls.attempts.get(prompt, 0)
            cls.attempts[prompt] = n + 1
        fault = FAULTS[int(prompt.split()[-1]) % len(FAULTS)]
        if n == 0 and fault == "429":
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
        if n < 2 and fault == "500":
            return self._send(500 if n == 0 else 503, b"<html>upstream error</html>")
        if n == 0 and fault == "garbage":
            return self._send(200, b'{"choices": [{"message": ')
        if n == 0 and fault == "stall":
            time.sleep(3.0)
            return self._send(200, b"{}")
        if n == 0 and fault == "no-choices":
            return self._send(200, b'{"id": "x", "choices": []}')
        reply = {
            "id": "c",
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": f"echo: {prompt}"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }
        return self._send(200, json.dumps(reply).encode())


@pytest.fixture()
def faulty():
    _Faulty.attempts = {}
    _Faulty.requests = 0
    _Faulty.mode = "faults"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _client(url: str, key: str = "good", **kw) -> OpenAILLM:
    return OpenAILLM(
        "gpt-4o-mini", base_url=url, api_key=key, timeout=kw.pop("timeout", 1.0), backoff=0.01, max_backoff=0.05, **kw
    )


def test_faults_are_retried_and_nothing_is_lost(faulty):
    llm = _client(faulty, max_retries=4)
    conversations = [[{"role": "user", "content": f"question number {i}"}] for i in range(18)]
    outs = llm.generate(conversations, GenerationConfig(max_new_tokens=5), batch_size=6)
    assert [o.text for o in outs] == [f"echo: question number {i}" for i in range(18)]
    faults = sum(
        {"429": 1, "500": 2, "garbage": 1, "stall": 1, "no-choices": 1, "none": 0}[FAULTS[i % 6]] for i in range(18)
    )
    assert llm.usage.retries >= faults  # a slow reply on a loaded machine may time out and be retried too
    for i in range(18):
        expected = {"429": 2, "500": 3, "garbage": 2, "stall": 2, "no-choices": 2, "none": 1}[FAULTS[i % 6]]
        assert _Faulty.attempts[f"question number {i}"] >= expected
    assert llm.usage.failures == 0
    assert llm.usage.requests == 18
    assert llm.usage.prompt_tokens == 180 and llm.usage.completion_tokens == 54
    assert llm.usage.cost_usd == pytest.approx((180 * 0.15 + 54 * 0.60) / 1e6)


def test_401_fails_at_once_with_a_clear_error(faulty):
    llm = _client(faulty, key="wrong", max_retries=5)
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        llm.chat([{"role": "user", "content": "hello 5"}])
    assert _Faulty.requests == 1  # no retry can fix a bad key


def test_gives_up_after_retries(faulty):
    _Faulty.mode = "always500"
    llm = _client(faulty, max_retries=2)
    with pytest.raises(LLMError, match="gave up after 3 attempts"):
        llm.chat([{"role": "user", "content": "hello 1"}])
    assert _Faulty.requests == 3 and llm.usage.failures == 1


def test_client_errors_are_not_retried(faulty):
    _Faulty.mode = "400"
    llm = _client(faulty, max_retries=4)
    with pytest.raises(LLMError, match="model not found"):
        llm.chat([{"role": "user", "content": "hello 1"}])
    assert _Faulty.requests == 1


def test_unreachable_server_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = _client(f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(LLMError, match="connection error"):
        llm.chat([{"role": "user", "content": "hello"}])


def test_load_llm_openai_reference(faulty):
    llm = load_llm("openai:my-model", base_url=faulty, api_key="good")
    assert isinstance(llm, OpenAILLM) and llm.model == "my-model" and llm.name == "openai:my-model"
    assert llm.chat([{"role": "user", "content": "ping 5"}]) == "echo: ping 5"


# ---- ragtune's own server: a real uvicorn process serving the bundled model ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_server():
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragtune.llm.server",
            "--model",
            "smollm2-135m-instruct",
            "--port",
            str(port),
            "--api-key",
            "secret",
            "--name",
            "smol",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/models", headers={"Authorization": "Bearer secret"}, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("server did not start")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_client_against_real_server(model_server):
    llm = OpenAILLM("smol", base_url=model_server, api_key="secret", timeout=120)
    assert llm.models() == ["smol"]
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Say hello."}],
        [{"role": "user", "content": "Name a colour."}],
    ]
    outs = llm.generate(conversations, GenerationConfig(max_new_tokens=6), batch_size=3)
    assert len(outs) == 3 and all(o.text for o in outs)
    assert all(o.prompt_tokens > 5 and 0 < o.completion_tokens <= 6 for o in outs)
    assert llm.usage.requests == 3 and llm.usage.cost_usd == 0.0
    pieces: dict[int, list[str]] = {}  # streaming falls back to one piece per answer, as each request returns
    streamed = llm.generate_stream(conversations, lambda i, piece: pieces.setdefault(i, []).append(piece),
                                   GenerationConfig(max_new_tokens=6), batch_size=3)
    assert pieces == {i: [g.text] for i, g in enumerate(streamed)}
    question = [{"role": "user", "content": "What is the capital of France?"}]
    paris, berlin = llm.loglikelihood(
        [(question, "The capital of France is Paris."), (question, "The capital of France is Berlin.")]
    )
    assert paris < 0 and berlin < paris


def test_real_server_rejects_a_bad_key(model_server):
    llm = OpenAILLM("smol", base_url=model_server, api_key="nope", timeout=30)
    with pytest.raises(AuthenticationError):
        llm.chat([{"role": "user", "content": "hi"}], GenerationConfig(max_new_tokens=2))


def test_real_server_streams_token_by_token_to_the_openai_client(model_server):
    """`stream=True` on the minimal model server: the official openai client reads a role chunk, several content
    chunks that concatenate to the non-streaming greedy answer, a finish reason and the usage."""
    import openai

    client = openai.OpenAI(base_url=model_server, api_key="secret", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    plain = client.chat.completions.create(model="smol", messages=messages, max_tokens=12)
    chunks = list(client.chat.completions.create(model="smol", messages=messages, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 3 and "".join(content) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
