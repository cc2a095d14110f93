"""The semantic cache survives a restart: entries written to a SQLite file (0600) are read back, still per tenant,
per fingerprint and per settings namespace, and bounded."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from ragtune.retrieve.semantic_cache import SemanticCache


def _v(*xs: float) -> np.ndarray:
    return np.asarray(xs, dtype=np.float32)


def _rows(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


def test_store_close_reopen_hits_for_the_same_tenant_only(tmp_path):
    path = tmp_path / "serve" / "semantic_cache.sqlite3"
    cache = SemanticCache(threshold=0.9, path=path)
    cache.store("acme", "fp1", "sig", _v(1, 0), "What is RAFT?", {"text": "fine-tuning", "n": 3})
    cache.store("beta", "fpB", "sig", _v(0, 1), "Beta's question", {"text": "beta's answer"})
    cache.close()
    assert path.stat().st_mode & 0o777 == 0o600
    for part in path.parent.glob("semantic_cache.sqlite3-*"):  # WAL / shared memory, if left
        assert part.stat().st_mode & 0o777 == 0o600, part

    reopened = SemanticCache(threshold=0.9, path=path)
    hit = reopened.lookup("acme", "fp1", "sig", _v(1, 0.1))
    assert hit is not None and hit.value == {"text": "fine-tuning", "n": 3} and hit.question == "What is RAFT?"
    assert reopened.lookup("other", "fp1", "sig", _v(1, 0)) is None  # another tenant, same fingerprint and vector
    assert reopened.lookup("beta", "fpB", "sig", _v(1, 0)) is None  # beta's entry does not answer acme's vector
    assert reopened.lookup("beta", "fpB", "sig", _v(0, 1)).value == {"text": "beta's answer"}
    assert reopened.lookup("acme", "fp1", "other-settings", _v(1, 0)) is None
    assert reopened.size("acme") == 1 and reopened.size("beta") == 1


def test_invalidate_and_fingerprint_change_after_reopen(tmp_path):
    path = tmp_path / "semantic_cache.sqlite3"
    cache = SemanticCache(threshold=0.9, path=path)
    cache.store("acme", "fp1", "sig", _v(1, 0), "q", "a")
    cache.store("beta", "fpB", "sig", _v(1, 0), "q", "b")
    cache.store("gamma", "fpG", "sig", _v(1, 0), "q", "g")
    cache.close()

    reopened = SemanticCache(threshold=0.9, path=path)
    reopened.invalidate("acme")
    assert reopened.lookup("acme", "fp1", "sig", _v(1, 0)) is None
    assert reopened.lookup("beta", "fpB2", "sig", _v(1, 0)) is None  # beta's documents changed: emptied
    reopened.close()

    third = SemanticCache(threshold=0.9, path=path)  # both removals reached the file
    assert third.lookup("acme", "fp1", "sig", _v(1, 0)) is None
    assert third.lookup("beta", "fpB", "sig", _v(1, 0)) is None
    assert third.lookup("gamma", "fpG", "sig", _v(1, 0)).value == "g"  # untouched tenants stay warm
    third.close()
    assert _rows(path) == 1


def test_bounded_by_max_entries_in_the_file_too(tmp_path):
    path = tmp_path / "semantic_cache.sqlite3"
    cache = SemanticCache(threshold=0.99, max_entries=2, path=path)
    for i, vec in enumerate([_v(1, 0), _v(0, 1), _v(-1, 0), _v(0, -1)]):
        cache.store("acme", "fp", "sig", vec, f"q{i}", f"a{i}")
    cache.close()
    assert _rows(path) == 2
    reopened = SemanticCache(threshold=0.99, max_entries=2, path=path)
    assert reopened.lookup("acme", "fp", "sig", _v(1, 0)) is None  # evicted
    assert reopened.lookup("acme", "fp", "sig", _v(0, -1)).value == "a3"
    reopened.close()
    smaller = SemanticCache(threshold=0.99, max_entries=1, path=path)  # a smaller bound applies at load
    assert smaller.size("acme") == 1 and smaller.lookup("acme", "fp", "sig", _v(0, -1)).value == "a3"
    smaller.close()
    assert _rows(path) == 1


def test_another_namespace_or_codec(tmp_path):
    """Rows made under other server settings never answer (nor are erased by) a cache of another namespace; values go
    through the given codec (no pickle)."""
    path = tmp_path / "semantic_cache.sqlite3"
    cache = SemanticCache(threshold=0.9, path=path, namespace="search-v1",
                          encode=lambda v: json.dumps(sorted(v)), decode=lambda s: set(json.loads(s)))
    cache.store("acme", "fp", "sig", _v(1, 0), "q", {"x", "y"})
    cache.close()
    same = SemanticCache(threshold=0.9, path=path, namespace="search-v1",
                         encode=lambda v: json.dumps(sorted(v)), decode=lambda s: set(json.loads(s)))
    assert same.lookup("acme", "fp", "sig", _v(1, 0)).value == {"x", "y"}
    same.close()
    other = SemanticCache(threshold=0.9, path=path, namespace="search-v2")
    assert other.lookup("acme", "fp", "sig", _v(1, 0)) is None
    other.close()
    back = SemanticCache(threshold=0.9, path=path, namespace="search-v1", decode=lambda s: set(json.loads(s)))
    assert back.lookup("acme", "fp", "sig", _v(1, 0)).value == {"x", "y"}
    back.invalidate("acme")  # the tenant's documents changed: its rows of every namespace go
    back.close()
    assert _rows(path) == 0


def test_a_damaged_file_is_set_aside(tmp_path):
    path = tmp_path / "semantic_cache.sqlite3"
    path.write_bytes(b"not a database" * 100)
    cache = SemanticCache(path=path)
    cache.store("acme", "fp", "sig", _v(1, 0), "q", "a")
    assert cache.lookup("acme", "fp", "sig", _v(1, 0)).value == "a"
    cache.close()
    assert list(tmp_path.glob("semantic_cache.sqlite3.damaged-*"))
    assert path.stat().st_mode & 0o777 == 0o600 and _rows(path) == 1


def test_a_wider_existing_mode_is_narrowed(tmp_path):
    path = tmp_path / "semantic_cache.sqlite3"
    SemanticCache(path=path).close()
    path.chmod(0o644)
    SemanticCache(path=path).close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_unserialisable_value_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "semantic_cache.sqlite3"
    cache = SemanticCache(path=path)
    with pytest.raises(TypeError):
        cache.store("acme", "fp", "sig", _v(1, 0), "q", object())
    assert cache.size("acme") == 0
    cache.close()
    assert _rows(path) == 0


def test_serve_pipeline_values_round_trip_through_its_codec():
    """The pipeline's cached value (pydantic citations and flags, plain messages) survives its codec unchanged."""
    from ragtune.serve.pipeline import _decode_cached, _encode_cached
    from ragtune.serve.schemas import Citation, Flagged

    value = {"text": "RAFT trains on distractors.", "finish_reason": "stop", "prompt_tokens": 12,
             "completion_tokens": 5,
             "citations": [Citation(index=1, chunk_id="c1", doc_id="d1", source="a.md", title="A", score=0.5,
                                    snippet="s")],
             "flagged": [Flagged(chunk_id="c2", source="b.md", rule="ignore-instructions", excerpt="ignore all",
                                 action="dropped")],
             "messages": [{"role": "user", "content": "What is RAFT?"}],
             "contexts": [{"chunk_id": "c1", "doc_id": "d1", "source": "a.md", "title": "A", "text": "t",
                           "score": 0.5}]}
    assert _decode_cached(_encode_cached(value)) == value


@pytest.mark.slow
def test_a_restarted_pipeline_answers_from_the_cache_file(tmp_path, embedder):
    """The server's pipeline, the bundled models, a real index: an answer cached before a restart is served after it,
    to the same tenant only, from <workspace>/serve/semantic_cache.sqlite3 (0600)."""
    import asyncio

    from serve_support import build_workspace

    from ragtune.llm import load_llm
    from ragtune.serve.pipeline import RagPipeline
    from ragtune.serve.schemas import ChatRequest

    ws = build_workspace(tmp_path, embedder)
    llm = load_llm()
    question = ChatRequest(messages=[{"role": "user", "content": "What color is the Acme fox?"}], max_tokens=4)
    first = asyncio.run(RagPipeline(ws, llm).answer("acme", question))
    assert first.cache["hit"] is False and first.citations
    path = ws / "serve" / "semantic_cache.sqlite3"
    assert path.stat().st_mode & 0o777 == 0o600

    restarted = RagPipeline(ws, llm)  # a new process would build exactly this
    again = asyncio.run(restarted.answer("acme", question))
    assert again.cache["hit"] is True
    assert (again.text, again.citations, again.flagged, again.messages) == (first.text, first.citations, first.flagged,
                                                                            first.messages)
    assert asyncio.run(restarted.answer("globex", question)).cache["hit"] is False
