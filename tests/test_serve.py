"""`ragtune serve` end to end: a real server process, the bundled models, the official openai client.

Covers the OpenAI surface (plain + streaming, models, errors), tenant isolation (every request parameter tried against
another tenant's chunks, responses, feedback and cache), guardrails, the semantic cache and its per-tenant
invalidation, durable idempotent feedback under concurrent clients, and `synth from-feedback` feeding the trainers.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serve_support import ACME_DOCS, Server, build_workspace

Q_FOX = "What color is the Acme fox?"


@pytest.fixture(scope="module")
def env(tmp_path_factory, embedder):
    from ragtune.serve.tenants import TenantStore

    root = tmp_path_factory.mktemp("serve")
    ws = build_workspace(root, embedder)
    store = TenantStore(ws)
    keys = {"acme": store.add("acme"), "globex": store.add("globex")}
    server = Server(ws, "--max-tokens", "4", "--redact-pii")
    yield {"ws": ws, "keys": keys, "url": server.url, "server": server}
    server.stop()


def client(env, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key=env["keys"][tenant], max_retries=0, timeout=60)


def post(env, tenant: str | None, path: str, body=None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {env['keys'][tenant]}"} if tenant else {}
    headers.update(kw.pop("headers", {}))
    return httpx.post(env["url"] + path, json=body, headers=headers, timeout=60, **kw)


def acme_chunk_ids(env) -> set[str]:
    from ragtune.index.store import ChunkStore

    return set(ChunkStore(env["ws"]).scan(["chunk_id"], {"tenant": "acme"})["chunk_id"].to_pylist())


def ask(c: openai.OpenAI, question: str, **extra):
    return c.chat.completions.create(model="anything", messages=[{"role": "user", "content": question}], max_tokens=4,
                                     **extra)


def test_openai_client_plain_and_streaming_with_citations(env):
    c = client(env, "acme")
    assert [m.id for m in c.models.list()] == ["smollm2-135m-instruct"]
    r = ask(c, Q_FOX, extra_body={"ragtune": {"cache": False}})
    assert r.id.startswith("chatcmpl-") and r.choices[0].message.content
    assert r.usage.completion_tokens <= 4 and r.usage.prompt_tokens > 20
    citations = r.model_extra["citations"]
    assert citations[0]["source"] == "fox.txt" and citations[0]["chunk_id"] in acme_chunk_ids(env)
    stream = ask(c, Q_FOX, stream=True, stream_options={"include_usage": True},
                 extra_body={"ragtune": {"cache": False}})
    chunks = list(stream)
    assert chunks[0].model_extra["citations"] == citations  # sources arrive before the answer
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content  # greedy: the same answer either way
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_streaming_sends_tokens_as_they_are_generated(env):
    """`stream=True` is real token streaming: several content chunks, the first well before the last, and together
    exactly the non-streaming greedy answer (with citations first and a finish_reason last)."""
    import time

    c = client(env, "acme")
    question, extra = "Describe the Acme fox in detail.", {"ragtune": {"cache": False}}
    plain = c.chat.completions.create(model="m", messages=[{"role": "user", "content": question}], max_tokens=16,
                                      extra_body=extra)
    t0 = time.perf_counter()
    arrivals = []
    for chunk in c.chat.completions.create(model="m", messages=[{"role": "user", "content": question}],
                                           max_tokens=16, stream=True, extra_body=extra):
        arrivals.append((time.perf_counter() - t0, chunk))
    assert arrivals[0][1].model_extra["citations"] == plain.model_extra["citations"]
    content = [(t, ch.choices[0].delta.content) for t, ch in arrivals if ch.choices and ch.choices[0].delta.content]
    assert len(content) > 3, content
    assert "".join(piece for _, piece in content) == plain.choices[0].message.content
    assert arrivals[-1][1].choices[0].finish_reason == plain.choices[0].finish_reason
    first, last = content[0][0], arrivals[-1][0]
    generation_s = arrivals[-1][1].model_extra["ragtune"]["timings_ms"]["generation"] / 1000
    # the first piece came out after one decoding step, not after all 16: most of the generation time lies between
    assert last - first > max(0.1, 0.4 * generation_s), (first, last, generation_s)


def test_a_closed_stream_stops_its_generation(env):
    """A client that closes its stream after the first token frees the model: the server sees the disconnect, stops
    that row at the next decoding step (`/health` counts it) and stores no half answer; so does a plain request
    whose client times out. Sampling at temperature 2 keeps the model from ending by itself before its 600 tokens."""
    import time

    def health() -> dict:
        return httpx.get(env["url"] + "/health", timeout=10).json()

    before = health()["cancelled"]
    body = {"model": "m", "stream": True, "max_tokens": 600, "temperature": 2.0, "seed": 1,
            "messages": [{"role": "user", "content": "Tell me a very long story about the Acme fox."}],
            "ragtune": {"cache": False}}
    headers = {"Authorization": f"Bearer {env['keys']['acme']}"}
    ids = set()
    with httpx.stream("POST", env["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                ids.add(chunk["id"])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    break  # the first token arrived: hang up
    t0 = time.monotonic()
    while health()["cancelled"] == before and time.monotonic() - t0 < 60:
        time.sleep(0.5)
    assert health()["cancelled"] == before + 1, "the abandoned generation ran on"
    assert time.monotonic() - t0 < 30  # 600 sampled tokens take minutes here; a stop takes a step
    db = sqlite3.connect(env["ws"] / "serve" / "feedback.sqlite3")
    try:
        stored = db.execute("SELECT COUNT(*) FROM responses WHERE id = ?", (ids.pop(),)).fetchone()[0]
    finally:
        db.close()
    assert stored == 0  # nothing half-written reached the feedback store
    # the same for a plain request whose client gives up waiting
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(env["url"] + "/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=3)
    t0 = time.monotonic()
    while health()["cancelled"] == before + 1 and time.monotonic() - t0 < 60:
        time.sleep(0.5)
    assert health()["cancelled"] == before + 2, "the timed-out request's generation ran on"
    assert ask(client(env, "acme"), Q_FOX).choices[0].message.content  # the model serves the next request


def test_errors_are_openai_shaped(env):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=env["url"] + "/v1", api_key="rtk_wrong", max_retries=0).models.list()
    for r in (post(env, None, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
              post(env, None, "/v1/search", {"query": "fox"}), httpx.get(env["url"] + "/v1/models")):
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    cases = [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100_000}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "ragtune": {"k": 10_000}}, "ragtune.k"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "ragtune": {"tenant": "globex"}}, "ragtune.tenant"),
    ]
    for body, param in cases:
        r = post(env, "acme", "/v1/chat/completions", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param and r.json()["error"]["message"]
    big = post(env, "acme", "/v1/chat/completions", headers={"Content-Type": "application/json"},
               content=b'{"messages": [{"role": "user", "content": "' + b"x" * 1_100_000 + b'"}]}', body=None)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


def test_tenant_cannot_reach_another_tenants_chunks(env):
    acme = acme_chunk_ids(env)
    acme_doc = json.loads(post(env, "acme", "/v1/search", {"query": "fox", "k": 1}).text)["data"][0]
    attempts = [{}, {"doc_id": acme_doc["doc_id"]}, {"source": acme_doc["source"]}, {"title": "fox"},
                {"meta.tenant": "acme"}]
    g = client(env, "globex")
    seen: set[str] = set()
    for filters in attempts:
        for query in (Q_FOX, ACME_DOCS["fox.txt"]):
            r = post(env, "globex", "/v1/search", {"query": query, "k": 50, "filters": filters})
            assert r.status_code == 200
            seen |= {h["chunk_id"] for h in r.json()["data"]}
    for filters in ({"tenant": "acme"}, {"tenant": "acme", "doc_id": acme_doc["doc_id"]}, {" TENANT ": "acme"},
                    {"Tenant": "acme"}):
        r = post(env, "globex", "/v1/search", {"query": Q_FOX, "k": 50, "filters": filters})
        assert r.status_code == 400 and "tenant" in r.json()["error"]["message"]  # the key decides, refused
    with pytest.raises(openai.BadRequestError):
        ask(g, ACME_DOCS["fox.txt"], extra_body={"ragtune": {"filters": {"tenant": "acme"}, "k": 50}})
    for extra in ({"tenant": "acme"}, {"user": "acme"}):
        r = ask(g, ACME_DOCS["fox.txt"], extra_body=extra)
        seen |= {c["chunk_id"] for c in r.model_extra["citations"]}
        assert "fox" not in json.dumps(r.model_extra["citations"]).lower()
    assert seen and not seen & acme  # globex only ever sees globex chunks
    r = post(env, "globex", "/v1/search", {"query": "fox", "tenant": "acme"})
    assert r.status_code == 400  # unknown fields are refused, not ignored


def test_responses_feedback_and_cache_are_per_tenant(env):
    a, g = client(env, "acme"), client(env, "globex")
    question = "Where does the Acme owl nest?"
    first = ask(a, question)
    assert first.model_extra["ragtune"]["cache"]["hit"] is False
    again = ask(a, question.lower().rstrip("?"))
    assert again.model_extra["ragtune"]["cache"]["hit"] is True
    assert again.choices[0].message.content == first.choices[0].message.content
    other = ask(g, question)  # the same question from another tenant: never acme's cached answer
    assert other.model_extra["ragtune"]["cache"]["hit"] is False
    assert not {c["chunk_id"] for c in other.model_extra["citations"]} & acme_chunk_ids(env)
    # feedback on another tenant's response reads as unknown
    r = post(env, "globex", "/v1/feedback", {"response_id": first.id, "rating": "up"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    r = post(env, "acme", "/v1/feedback", {"response_id": first.id, "rating": "up"})
    assert r.status_code == 200
    r = post(env, "globex", f"/v1/curation/items/feedback/{r.json()['id']}", {"action": "reject"})
    assert r.status_code == 404
    items = httpx.get(env["url"] + "/v1/curation/items?kind=feedback&status=all",
                      headers={"Authorization": f"Bearer {env['keys']['globex']}"}).json()["data"]
    assert all(i["question"] != question for i in items)
    r = httpx.get(env["url"] + "/v1/curation/items?kind=raft",
                  headers={"Authorization": f"Bearer {env['keys']['globex']}"})
    assert r.status_code == 403  # workspace-wide RAFT data needs an admin key


def test_injection_is_flagged_and_kept_out_of_the_prompt(env):
    r = ask(client(env, "acme"), "What is the shipping policy?", extra_body={"ragtune": {"k": 3, "cache": False}})
    flagged = r.model_extra["ragtune"]["flagged"]
    assert [f["source"].rsplit("/", 1)[-1] for f in flagged] == ["evil.txt"]
    assert flagged[0]["action"] == "dropped" and flagged[0]["rule"] == "ignore-instructions"
    assert all(not c["source"].endswith("evil.txt") for c in r.model_extra["citations"])
    db = sqlite3.connect(env["ws"] / "serve" / "feedback.sqlite3")
    messages = db.execute("SELECT messages FROM responses WHERE id = ?", (r.id,)).fetchone()[0]
    assert "PWNED" not in messages and "Ignore all previous" not in messages  # never reached the model


def test_pii_is_redacted_in_the_request_log(env):
    ask(client(env, "acme"), "Does jane.doe@example.com own the fox? Call +1 415-555-0100")
    log = (env["ws"] / "serve" / "requests.jsonl").read_text()
    assert "jane.doe@example.com" not in log and "555-0100" not in log
    assert "[EMAIL]" in log and "[PHONE]" in log


def test_cache_is_invalidated_when_the_tenants_index_changes(env, embedder, tmp_path):
    from ragtune.config import IngestConfig
    from ragtune.index.ingest import ingest

    a, g = client(env, "acme"), client(env, "globex")
    ask(a, "What does the Acme fox eat?")
    ask(g, "What does the Globex whale eat?")
    assert ask(a, "What does the Acme fox eat?").model_extra["ragtune"]["cache"]["hit"]
    new = tmp_path / "acme-new"
    new.mkdir()
    (new / "badger.txt").write_text("The Acme badger digs tunnels and eats worms.\n")
    ingest([new], env["ws"], IngestConfig(tenant="acme", prune=False), embedder=embedder)  # another process writes
    import time

    time.sleep(1.2)  # the server looks for a newer index version at most once a second
    assert not ask(a, "What does the Acme fox eat?").model_extra["ragtune"]["cache"]["hit"]
    assert ask(g, "What does the Globex whale eat?").model_extra["ragtune"]["cache"]["hit"]  # untouched tenant
    hits = post(env, "acme", "/v1/search", {"query": "badger tunnels", "k": 1}).json()["data"]
    assert hits[0]["source"].endswith("badger.txt")  # the running server serves the new document


def test_concurrent_clients_lose_no_feedback_and_retries_are_idempotent(env):
    db_path = env["ws"] / "serve" / "feedback.sqlite3"
    before = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    questions = [f"Question {i}: what does the Acme owl hunt?" for i in range(12)]

    def one(i: int) -> str:
        r = ask(client(env, "acme"), questions[i], extra_body={"ragtune": {"cache": False}})
        key = {"Idempotency-Key": f"fb-{i}"}
        body = {"response_id": r.id, "rating": "down" if i % 2 else "up",
                **({"correction": "It hunts at night."} if i % 3 == 0 else {})}
        first = post(env, "acme", "/v1/feedback", body, headers=key)
        retry = post(env, "acme", "/v1/feedback", body, headers=key)
        assert first.status_code == retry.status_code == 200
        assert retry.json()["id"] == first.json()["id"] and retry.json()["created"] is False
        return first.json()["id"]

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(one, range(len(questions))))
    rows = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    assert rows - before == len(set(ids)) == len(questions)


def test_synth_from_feedback_feeds_the_trainers(env, tmp_path):
    from ragtune.train.data import load_preferences, load_raft
    from ragtune.train.retriever.data import load_questions

    a = client(env, "acme")
    r = ask(a, "Which color is the fox of Acme?")
    post(env, "acme", "/v1/feedback", {"response_id": r.id, "rating": "down", "correction": "bright orange"})
    r2 = ask(a, "Where does the Acme fox live?")
    post(env, "acme", "/v1/feedback", {"response_id": r2.id, "correction": "the northern forest"})
    out = tmp_path / "fb"
    proc = subprocess.run([sys.executable, "-m", "ragtune", "synth", "from-feedback", "--workspace", str(env["ws"]),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "SFT examples" in proc.stdout
    sft = load_raft(out / "sft.jsonl", split="all")
    fixed = [e for e in sft if e.answer == "bright orange"]
    assert fixed and fixed[0].oracle_ids and "##begin_quote##" in fixed[0].cot_answer  # quoted from the chunk
    assert fixed[0].cot_answer.endswith("<ANSWER>: bright orange")
    prefs = load_preferences(out / "preferences.jsonl")
    assert any(p["chosen"][0]["content"] == "bright orange" for p in prefs)
    pairs = load_questions(out / "pairs.jsonl", split="all")
    assert any(q.positives and "orange" in q.positives[0] for q in pairs)
    assert all(e.metadata["tenant"] in ("acme", "globex") for e in sft)
    only_globex = subprocess.run(
        [sys.executable, "-m", "ragtune", "synth", "from-feedback", "--workspace", str(env["ws"]), "--out",
         str(tmp_path / "g"), "--tenant", "globex"], capture_output=True, text=True, timeout=120)
    assert only_globex.returncode == 0 and "0 feedback rows" in only_globex.stdout


def test_search_llm_stages_use_the_served_model(env, tmp_path):
    """`serve --config` with `search: {transform: rewrite, reranker: "llm:"}` answers through both stages, run by the
    model the server already holds: unnamed or naming the same weights, a stage gets that generator, not a copy."""
    from ragtune.config import SearchConfig
    from ragtune.llm import load_llm
    from ragtune.serve.pipeline import RagPipeline

    llm = load_llm()
    stages = RagPipeline(env["ws"], llm, SearchConfig(transform="rewrite", reranker="llm:",
                                                      transform_model="smollm2-135m-instruct")).searcher.pipeline
    assert stages.transformer.llm is llm and stages.reranker.llm is llm
    cfg = tmp_path / "serve.yaml"
    cfg.write_text('search:\n  transform: rewrite\n  reranker: "llm:"\n  k: 2\n', encoding="utf-8")
    server = Server(env["ws"], "--config", str(cfg), "--max-tokens", "4")
    try:
        question = "Which Acme animal hunts at night?"
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=env["keys"]["acme"], max_retries=0, timeout=120)
        r = ask(c, question, extra_body={"ragtune": {"cache": False}})
    finally:
        server.stop()
    citations = r.model_extra["citations"]
    assert r.choices[0].message.content and {c["chunk_id"] for c in citations} <= acme_chunk_ids(env)
    assert all(0.0 <= cit["score"] <= 1.0 for cit in citations)  # P(yes) from the LLM reranker, not an RRF score
    db = sqlite3.connect(env["ws"] / "cache" / "query_transforms.sqlite")
    parts = [json.loads(row[0]) for row in db.execute("SELECT parts FROM transforms")]
    assert [p[:2] for p in parts if p[-1] == question] == [["smollm2-135m-instruct", "rewrite"]]
