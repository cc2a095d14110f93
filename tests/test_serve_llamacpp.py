"""`ragtune serve --engine llamacpp`: a real server process over llama.cpp's continuous batching (parallel slots),
with the official openai client. Concurrent requests are decoded together and each gets the answer it gets alone;
streaming sends pieces as they are decoded; a client that hangs up frees its slot; several adapters are served by
`model` name (when llama.cpp's LoRA converter is on this machine); tenants and guardrails are those of every engine."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from serve_support import Server, build_workspace

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
converter_dir = os.environ.get("LLAMA_CPP_DIR", "")
HAS_CONVERTER = bool(converter_dir) and Path(converter_dir, "convert_lora_to_gguf.py").is_file()
BASE = "smollm2-135m-instruct"
QUESTIONS = ["What color is the Acme fox?", "What does the Acme owl hunt?", "Where does the Acme fox live?",
             "What are the owl's feathers like?"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, embedder):
    from ragtune.serve.tenants import TenantStore

    root = tmp_path_factory.mktemp("serve-llamacpp")
    ws = build_workspace(root, embedder)
    store = TenantStore(ws)
    keys = {"acme": store.add("acme"), "globex": store.add("globex")}
    args = ["--engine", "llamacpp", "--slots", "4", "--slot-ctx", "1024", "--max-tokens", "12", "--prompt", "short"]
    if HAS_CONVERTER:  # one PEFT adapter under two names: converted once, two routes over one set of weights
        folder = _adapter(root / "tuned")
        args += ["--adapter", f"tuned={folder}", "--adapter", f"again={folder}"]
    server = Server(ws, *args, timeout=600.0)
    yield {"ws": ws, "keys": keys, "url": server.url, "server": server}
    server.stop()


def _adapter(folder: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.models import resolve_generator

    torch.manual_seed(1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_generator().path, dtype=torch.float32),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)  # strong: 0.05 left all three 12-token RAG answers as the base gave them
    peft.save_pretrained(folder)
    return folder


def client(env, tenant: str = "acme") -> openai.OpenAI:
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key=env["keys"][tenant], max_retries=0, timeout=120)


def ask(env, question: str, model: str = BASE, tenant: str = "acme", **extra):
    return client(env, tenant).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=12,
        extra_body={"ragtune": {"cache": False, **extra}})


def health(env) -> dict:
    return httpx.get(env["url"] + "/health", timeout=10).json()


def test_concurrent_requests_are_decoded_together_and_answer_as_alone(env):
    alone = [ask(env, q).choices[0].message.content for q in QUESTIONS]
    steps = health(env)["batches"]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: ask(env, q), QUESTIONS))
    assert [r.choices[0].message.content for r in together] == alone
    tokens = sum(r.usage.completion_tokens + 1 for r in together)
    assert health(env)["batches"] - steps < tokens  # steps carried several requests' tokens
    assert all(r.model == BASE and r.model_extra["citations"] for r in together)


def test_a_burst_of_sixteen_clients_on_four_slots_all_get_their_answers(env):
    """Four times as many clients as slots, all at once: every request finishes (the later ones wait in the queue,
    in order, while the engine reads one prompt at a time and keeps decoding the others), each with the answer it
    gets alone, and the server is idle and healthy afterwards."""
    alone = {q: ask(env, q).choices[0].message.content for q in QUESTIONS}
    asked = [QUESTIONS[i % len(QUESTIONS)] for i in range(16)]
    with ThreadPoolExecutor(len(asked)) as pool:
        replies = list(pool.map(lambda q: ask(env, q), asked))
    assert [r.choices[0].message.content for r in replies] == [alone[q] for q in asked]
    assert all(r.usage.completion_tokens > 0 for r in replies)
    state = health(env)
    assert state["status"] == "ok" and state["queued"] == 0 and state["busy_s"] is None


def test_streaming_sends_pieces_that_add_up_to_the_answer(env):
    plain = ask(env, QUESTIONS[0]).choices[0].message.content
    stream = client(env).chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=12, stream=True,
        extra_body={"ragtune": {"cache": False}})
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == plain and len(pieces) > 1


def test_a_hung_up_stream_frees_its_slot_and_stores_nothing(env):
    before = health(env)["cancelled"]
    body = {"model": BASE, "stream": True, "max_tokens": 600, "temperature": 2.0, "seed": 1,
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
    while health(env)["cancelled"] == before and time.monotonic() - t0 < 60:
        time.sleep(0.3)
    assert health(env)["cancelled"] == before + 1 and time.monotonic() - t0 < 30
    db = sqlite3.connect(env["ws"] / "serve" / "feedback.sqlite3")
    try:
        assert db.execute("SELECT COUNT(*) FROM responses WHERE id = ?", (ids.pop(),)).fetchone()[0] == 0
    finally:
        db.close()
    assert ask(env, QUESTIONS[0]).choices[0].message.content  # the slot serves the next request


def test_tenants_and_guardrails_are_unchanged(env):
    r = ask(env, "What does the Globex whale eat?", tenant="acme")
    assert not any("whale" in c["snippet"].lower() for c in r.model_extra["citations"])  # acme sees acme's only
    g = ask(env, "What does the Globex whale eat?", tenant="globex")
    assert any("whale" in c["snippet"].lower() for c in g.model_extra["citations"])
    r = ask(env, "What is the shipping policy?", k=3)
    flagged = r.model_extra["ragtune"]["flagged"]
    assert [f["source"].rsplit("/", 1)[-1] for f in flagged] == ["evil.txt"] and flagged[0]["action"] == "dropped"


@pytest.mark.skipif(not HAS_CONVERTER, reason="set LLAMA_CPP_DIR to a llama.cpp checkout to convert a PEFT adapter")
def test_several_adapters_by_model_name_beside_the_base(env):
    assert [m.id for m in client(env).models.list()] == ["tuned", "again", BASE]
    asked = [(m, q) for q in QUESTIONS[:3] for m in ("tuned", "again", BASE)]
    with ThreadPoolExecutor(len(asked)) as pool:  # all at once: the steps take turns between the adapters
        replies = list(pool.map(lambda mq: ask(env, mq[1], model=mq[0]), asked))
    assert [r.model for r in replies] == [m for m, _ in asked]
    text = {mq: r.choices[0].message.content for mq, r in zip(asked, replies, strict=True)}
    assert all(text["tuned", q] == text["again", q] for q in QUESTIONS[:3])  # the same LoRA under two names
    assert any(text["tuned", q] != text[BASE, q] for q in QUESTIONS[:3])  # applied to its own requests only
    with pytest.raises(openai.NotFoundError) as caught:
        ask(env, QUESTIONS[1], model="nonesuch")
    assert caught.value.body["code"] == "model_not_found" and "tuned" in caught.value.body["message"]
    default = client(env).chat.completions.create(  # no model named: the first adapter
        model="", messages=[{"role": "user", "content": QUESTIONS[1]}], max_tokens=12,
        extra_body={"ragtune": {"cache": False}})
    assert default.model == "tuned"
