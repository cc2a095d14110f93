"""Regression tests of `ragtune serve` hardening: each item an attacker on 127.0.0.1 found, against a real server.

One request must not stall the others (a 5,000-stop request, a 10,000-part message, a generation past its deadline),
every bad input is a 4xx naming the field (lone surrogates, seeds and offsets past int64), a 500 says nothing internal
and keeps the connection, files holding tenants' text are 0600, and no API docs page is open.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
from serve_support import Server, build_workspace

from ragtune.llm.base import LLM, Generation, GenerationConfig
from ragtune.llm.server import Batcher, GenerationTimeout
from ragtune.serve.feedback import FeedbackStore
from ragtune.serve.request_log import RequestLog

Q_FOX = "What color is the Acme fox?"
TIMEOUT_S = 8.0  # the server's generation deadline in this module
MARGIN_S = 10.0


@pytest.fixture(scope="module")
def env(tmp_path_factory, embedder):
    from ragtune.serve.tenants import TenantStore

    root = tmp_path_factory.mktemp("serve_hardening")
    ws = build_workspace(root, embedder)
    store = TenantStore(ws)
    keys = {"acme": store.add("acme"), "globex": store.add("globex"), "admin": store.add("acme", admin=True)}
    config = root / "serve.yaml"
    config.write_text(f"serve:\n  limits:\n    generation_timeout_s: {TIMEOUT_S}\n    stall_margin_s: {MARGIN_S}\n")
    server = Server(ws, "--max-tokens", "4", "--config", str(config))
    yield {"ws": ws, "keys": keys, "url": server.url, "server": server}
    server.stop()


def post(env, tenant: str | None, path: str, body=None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {env['keys'][tenant]}"} if tenant else {}
    headers.update(kw.pop("headers", {}))
    return httpx.post(env["url"] + path, json=body, headers=headers, timeout=120, **kw)


def get(env, tenant: str | None, path: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {env['keys'][tenant]}"} if tenant else {}
    return httpx.get(env["url"] + path, headers=headers, timeout=60, **kw)


def chat(question: str = Q_FOX, **extra) -> dict:
    return {"model": "x", "messages": [{"role": "user", "content": question}], "max_tokens": 4,
            "ragtune": {"cache": False}, **extra}


def assert_400(r: httpx.Response, param: str | None = None) -> dict:
    assert r.status_code == 400, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


# -- one request cannot stall the others ----------------------------------------------------------------------------
def test_5000_stops_refused_at_once_and_another_tenant_still_answered(env):
    t0 = time.perf_counter()
    r = post(env, "acme", "/v1/chat/completions", chat(stop=["a"] * 5000))
    assert time.perf_counter() - t0 < 5
    assert "stop" in assert_400(r, "stop")["message"]
    assert_400(post(env, "acme", "/v1/chat/completions", chat(stop=["x" * 101])), "stop")
    other = post(env, "globex", "/v1/chat/completions", chat("What does the Globex whale eat?"))
    assert other.status_code == 200 and other.json()["choices"][0]["message"]["content"]


def test_stops_within_bounds_do_not_delay_another_request(env):
    """Four distinct 100-character stops (a vocabulary scan each, 0.4 s on one core, more on a busy machine) are
    prepared on the request's own thread, so a plain request sent alongside is not held behind them."""
    body = chat("What does the Globex whale eat?")
    t0 = time.perf_counter()
    assert post(env, "globex", "/v1/chat/completions", body).status_code == 200
    baseline = time.perf_counter() - t0
    with ThreadPoolExecutor(2) as pool:
        stops = [f"{uuid.uuid4().hex}{i}" * 3 for i in range(4)]
        assert all(len(s) <= 100 for s in stops)
        slow = pool.submit(post, env, "acme", "/v1/chat/completions", chat(stop=stops))
        time.sleep(0.05)
        t1 = time.perf_counter()
        plain = post(env, "globex", "/v1/chat/completions", body)
        plain_s = time.perf_counter() - t1
        assert slow.result().status_code == 200
    assert plain.status_code == 200
    assert plain_s < 3 * baseline + 3.0, (plain_s, baseline)


def test_many_part_message_refused(env):
    parts = [{"type": "text", "text": "a"}] * 10_000
    body = {"messages": [{"role": "system", "content": parts}, {"role": "user", "content": Q_FOX}], "max_tokens": 4}
    t0 = time.perf_counter()
    assert_400(post(env, "acme", "/v1/chat/completions", body), "messages.0.content")
    assert time.perf_counter() - t0 < 5


@pytest.mark.slow
def test_generation_past_its_deadline_gets_503_and_health_stays_ok(env):
    body = chat("Write a very long story about the Acme fox, its forest and every animal in it.", max_tokens=1000)
    t0 = time.perf_counter()
    r = post(env, "acme", "/v1/chat/completions", body)
    took = time.perf_counter() - t0
    assert r.status_code == 503, r.text[:300]
    assert r.json()["error"]["code"] == "generation_timeout" and r.headers.get("retry-after")
    assert took < TIMEOUT_S + MARGIN_S + 5, took
    health = get(env, None, "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["timed_out"] >= 1
    assert post(env, "globex", "/v1/chat/completions", chat("What does the Globex whale eat?")).status_code == 200


# -- bad input is a 400 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "raw"), [
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "fox \\ud800"}], "max_tokens": 2}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}'),
    ("/v1/feedback", b'{"question": "q", "answer": "a", "rating": "up", "correction": "x\\ud800"}'),
    ("/v1/feedback", b'{"question": "q\\udc00", "answer": "a", "rating": "down"}'),
    ("/v1/search", b'{"query": "fox \\ud800"}'),
    ("/v1/search", b'{"query": "fox", "filters": {"\\ud800": "v"}}'),
])
def test_lone_surrogates_are_400(env, path, raw):
    r = httpx.post(env["url"] + path, content=raw, timeout=60, headers={
        "Authorization": f"Bearer {env['keys']['acme']}", "Content-Type": "application/json"})
    assert "surrogate" in assert_400(r)["message"]


def test_paired_surrogates_are_ordinary_text(env):
    raw = b'{"query": "fox \\ud83e\\udd8a"}'  # an escaped emoji: valid UTF-16, valid Unicode
    r = httpx.post(env["url"] + "/v1/search", content=raw, timeout=60, headers={
        "Authorization": f"Bearer {env['keys']['acme']}", "Content-Type": "application/json"})
    assert r.status_code == 200


@pytest.mark.parametrize(("field", "value"), [
    ("seed", 2**63), ("seed", -(2**63) - 1), ("temperature", 2.5), ("top_p", 0), ("n", 2), ("max_tokens", 0),
    ("max_tokens", 10**30), ("logit_bias", {str(i): 1 for i in range(301)}), ("user", "u" * 300),
])
def test_out_of_range_fields_are_400_naming_the_field(env, field, value):
    assert_400(post(env, "acme", "/v1/chat/completions", chat(**{field: value})), field)


def test_int64_seed_accepted(env):
    r = post(env, "acme", "/v1/chat/completions", chat(seed=2**63 - 1, temperature=0.7))
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("temperature", [5e-324, 1e-30, 1e-4])
def test_near_zero_temperature_decodes_greedily(env, temperature):
    """Found by the fuzz test: a subnormal temperature made the logits inf and sampling raised (a 500)."""
    r = post(env, "acme", "/v1/chat/completions", chat(temperature=temperature, max_tokens=2))
    assert r.status_code == 200, r.text[:300]


def test_unparsable_json_is_400(env):
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"query": ' + b"9" * 5000 + b"}", b"\xff\xfe{}", b"{bad json"):
        r = httpx.post(env["url"] + "/v1/search", content=raw, timeout=60, headers={
            "Authorization": f"Bearer {env['keys']['acme']}", "Content-Type": "application/json"})
        assert_400(r)


@pytest.mark.parametrize("query", ["offset=9223372036854775808", "offset=-1", "limit=1000000", "limit=0"])
def test_curation_paging_out_of_range_is_400(env, query):
    assert_400(get(env, "acme", f"/v1/curation/items?{query}"))


def test_errors_echo_at_most_100_characters_of_input(env):
    marker = "Z" * 150
    r = post(env, "acme", "/v1/curation/items/feedback/" + "Y" * 120, {"action": "accept"})
    assert r.status_code == 404 and "Y" * 101 not in r.text
    huge = post(env, "acme", "/v1/curation/items/feedback/" + "Q" * 60_000, {"action": "accept"})  # httpx's cap
    assert huge.status_code in (400, 404, 414) and len(huge.text) < 2_000
    huge = post(env, "acme", "/v1/feedback", {"response_id": "R" * 100_000, "rating": "up"})
    assert huge.status_code == 400 and len(huge.text) < 2_000
    r = post(env, "acme", "/v1/feedback", {"response_id": marker, "rating": "up"})
    assert_400(r, "response_id")
    assert marker[:101] not in r.text
    r = post(env, "acme", "/v1/search", {"query": "fox", "filters": {marker * 2: "v"}})  # keys are at most 256
    assert r.status_code == 400 and "Z" * 101 not in r.text
    r = post(env, "acme", "/v1/curation/items/feedback/x", {"action": "edit", "edits": {"z" * 60: "v"}})
    assert r.status_code in (400, 404) and "z" * 101 not in r.text


# -- a 500 says nothing internal and keeps the connection -----------------------------------------------------------
def _exchange(url: str, requests: list[bytes]) -> list[tuple[int, dict[str, str], bytes]]:
    """Send each request on ONE TCP connection, reading each response fully first (a real keep-alive client)."""
    host, port = url.removeprefix("http://").split(":")
    out = []
    with socket.create_connection((host, int(port)), timeout=60) as sock, sock.makefile("rb") as f:
        for raw in requests:
            sock.sendall(raw)
            status = f.readline()
            assert status, "the server closed the connection instead of answering the next request on it"
            headers: dict[str, str] = {}
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            out.append((int(status.split()[1]), headers, f.read(int(headers.get("content-length", "0")))))
    return out


def test_500_has_an_id_and_no_internal_text_and_keeps_the_connection(env):
    """A real 500: a corrupt workspace file (synth/raft.jsonl holding a record that is no RAFT example) read by the
    admin curation route."""
    raft = env["ws"] / "synth" / "raft.jsonl"
    raft.parent.mkdir(parents=True, exist_ok=True)
    raft.write_text('{"examples": [{"secret_internal_field": "INTERNAL-DETAIL-42"}]}\n', encoding="utf-8")
    try:
        port = env["url"].rsplit(":", 1)[1]
        key = env["keys"]["admin"]
        bad = (f"GET /v1/curation/items?kind=raft HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: Bearer {key}\r\n\r\n").encode()
        health = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        (s1, h1, b1), (s2, _, b2), (s3, _, _) = _exchange(env["url"], [bad, health, bad])
    finally:
        raft.unlink()
    assert s1 == 500 and s2 == 200 and s3 == 500 and b'"ok"' in b2
    assert h1.get("connection", "").lower() != "close"
    import json

    error = json.loads(b1)["error"]
    assert error["type"] == "server_error" and error["id"].startswith("err-") and error["id"] in error["message"]
    for leak in ("INTERNAL-DETAIL", "secret_internal", "ValidationError", "pydantic", "Traceback", "raft.jsonl"):
        assert leak not in b1.decode(), leak
    log = env["server"].log.read_text()
    assert error["id"] in log and "ValidationError" in log  # the operator gets the detail, under the same id


# -- no leaky surfaces ----------------------------------------------------------------------------------------------
def test_files_with_tenants_text_are_0600(env):
    r = post(env, "acme", "/v1/feedback", {"question": "q", "answer": "a", "rating": "up"})
    assert r.status_code == 200
    serve = env["ws"] / "serve"
    paths = [serve / "feedback.sqlite3", serve / "feedback.sqlite3-wal", serve / "feedback.sqlite3-shm",
             serve / "requests.jsonl"]
    assert all(p.exists() for p in paths), [p.name for p in paths if not p.exists()]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in paths} == {p.name: "0o600" for p in paths}


def test_existing_world_readable_files_are_made_private(tmp_path):
    db, log = tmp_path / "feedback.sqlite3", tmp_path / "requests.jsonl"
    old = os.umask(0o022)
    try:
        FeedbackStore(path=db).close()
        for p in (db, log):
            p.touch()
            p.chmod(0o644)
        store = FeedbackStore(path=db)
        store.record_response("r1", "t", "m", "q", [], [], "a", {})
        RequestLog(log).write(query="hello")
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert modes and set(modes.values()) == {0o600}, modes
    fresh = tmp_path / "new" / "requests.jsonl"
    RequestLog(fresh).write(query="x")
    assert fresh.stat().st_mode & 0o777 == 0o600


def test_no_docs_pages_and_schema_only_for_an_admin_key(env):
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert get(env, None, path).status_code == 404
        assert get(env, "admin", path).status_code == 404
    assert get(env, None, "/openapi.json").status_code == 401
    assert get(env, "acme", "/openapi.json").status_code == 403
    schema = get(env, "admin", "/openapi.json")
    assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]
    page = get(env, None, "/curate").text
    for external in ("cdn.", "jsdelivr", "unpkg", "<script src=\"http", "<script src='http"):
        assert external not in page


# -- the batcher's deadline and stall detection (in process) ----------------------------------------------------------
class WedgedLLM(LLM):
    """A fake standing in for a model whose forward pass hangs (a wedged GPU, an endless prefill): nothing real can be
    made to hang on demand. `generate` blocks until `release` is set."""

    name = "wedged"

    def __init__(self) -> None:
        self.release, self.entered = threading.Event(), threading.Event()

    def generate(self, conversations, config=None, batch_size=8):
        self.entered.set()
        self.release.wait(30)
        return [Generation(text="done") for _ in conversations]

    def loglikelihood(self, requests, batch_size=8):
        return [0.0 for _ in requests]


def test_batcher_reports_a_stall_and_gives_queued_jobs_up_at_their_deadline():
    llm = WedgedLLM()
    batcher = Batcher(llm, batch_wait_ms=1, timeout_s=0.3)
    first: Future = batcher.submit([{"role": "user", "content": "a"}], GenerationConfig(max_new_tokens=2),
                                   timeout_s=60)
    assert llm.entered.wait(10)
    queued = batcher.submit([{"role": "user", "content": "b"}], GenerationConfig(max_new_tokens=3))
    time.sleep(0.6)
    state = batcher.health(stall_after_s=0.4)
    assert state["status"] == "degraded" and "generating" in state["reason"] and state["queued"] == 1
    assert batcher.health(stall_after_s=60)["status"] == "ok"
    llm.release.set()
    assert first.result(10).text == "done"  # a job that finished keeps its answer
    with pytest.raises(GenerationTimeout):
        queued.result(10)  # past its deadline while queued: skipped, never generated
    assert batcher.timed_out == 1
    deadline = time.monotonic() + 5
    while batcher.health(stall_after_s=0.4)["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batcher.health(stall_after_s=0.4)["status"] == "ok"
