"""Ingest and tenants, on a real LanceDB workspace with the bundled embedder: a file ingested again under another
`--tenant` moves (every chunk, and its derived sentence rows), an index written before keys carried the tenant is not
re-embedded, and the manifest's ingest roots let serve show `sub/file.txt` rather than a bare file name."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ragtune.config import IngestConfig
from ragtune.hashing import short_id
from ragtune.index.ingest import _doc_key, ingest
from ragtune.index.store import ChunkStore
from ragtune.serve.scope import SourceNames
from ragtune.workspace import Workspace

# ~40 sentences: several chunks at the default 240 tokens, so "every chunk" means more than one.
LONG = " ".join(f"Sentence {i} says the river otter number {i} swims near the old mill at dawn." for i in range(40))


def _rows(ws: Path, level: str | None = None) -> list[dict]:
    store = ChunkStore(ws) if level is None else ChunkStore(ws, level)
    return store.scan(["doc_id", "doc_key", "tenant", "version"]).to_pylist()


def test_reingest_under_another_tenant_moves_every_chunk(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "otters.txt").write_text(LONG, encoding="utf-8")
    (docs / "short.txt").write_text("Beavers build dams from branches and mud.", encoding="utf-8")
    ws = tmp_path / "ws"
    first = ingest([docs], ws, IngestConfig(tenant="a", sentences=True), embedder=embedder)
    before = _rows(ws)
    assert first.new == 2 and len(before) >= 4  # several chunks of the long file, one of the short
    assert {r["tenant"] for r in before} == {"a"}
    sentences_before = len(_rows(ws, "sentences"))
    assert sentences_before > len(before)

    moved = ingest([docs], ws, IngestConfig(tenant="b", sentences=True), embedder=embedder)
    assert (moved.updated, moved.unchanged, moved.new) == (2, 0, 0)
    after = _rows(ws)
    assert Counter(r["doc_id"] for r in after) == Counter(r["doc_id"] for r in before)  # same chunks, count unchanged
    assert {r["tenant"] for r in after} == {"b"}
    assert ChunkStore(ws).count({"tenant": "a"}) == 0 and ChunkStore(ws).count({"tenant": "b"}) == len(before)
    # The derived level follows the key: its rows moved too, so tenant a's small-to-big search finds nothing.
    sentences = _rows(ws, "sentences")
    assert len(sentences) == sentences_before and {r["tenant"] for r in sentences} == {"b"}

    again = ingest([docs], ws, IngestConfig(tenant="b"), embedder=embedder)
    assert (again.unchanged, again.chunks_added) == (2, 0)  # staying with b re-embeds nothing

    versioned = ingest([docs], ws, IngestConfig(tenant="b", version="v2"), embedder=embedder)
    assert versioned.updated == 2 and {r["version"] for r in _rows(ws)} == {"v2"}

    untenanted = ingest([docs], ws, embedder=embedder)
    assert untenanted.updated == 2 and {(r["tenant"], r["version"]) for r in _rows(ws)} == {(None, None)}
    assert len(_rows(ws)) == len(before)


def test_an_index_from_before_tenant_keys_is_not_re_embedded(tmp_path, embedder):
    """Earlier releases keyed a document by content and chunker settings alone, whatever its tenant. Such an index
    is made here the way they made it: ingest without a tenant (the key is the same formula), then set the tenant
    column as `--tenant a` did. Ingesting it again with `--tenant a` must skip it; with `--tenant b`, move it."""
    assert _doc_key("h", "sig", None, None) == short_id("h", "sig")  # the untenanted key is the old key
    assert _doc_key("h", "sig", "a", None) != _doc_key("h", "sig", "b", None) != _doc_key("h", "sig", None, "None")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "otters.txt").write_text(LONG, encoding="utf-8")
    ws = tmp_path / "ws"
    ingest([docs], ws, embedder=embedder)
    store = ChunkStore(ws)
    store.table.update(values={"tenant": "a"})
    legacy_keys = {r["doc_key"] for r in _rows(ws)}

    same = ingest([docs], ws, IngestConfig(tenant="a"), embedder=embedder)
    assert (same.unchanged, same.updated, same.chunks_added) == (1, 0, 0)
    assert {r["doc_key"] for r in _rows(ws)} == legacy_keys  # left as it was

    moved = ingest([docs], ws, IngestConfig(tenant="b"), embedder=embedder)
    assert moved.updated == 1 and {r["tenant"] for r in _rows(ws)} == {"b"}
    assert not {r["doc_key"] for r in _rows(ws)} & legacy_keys


def test_serve_shows_sources_relative_to_the_ingest_roots(tmp_path, embedder):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "top.txt").write_text("Herons stand still in shallow water.", encoding="utf-8")
    (docs / "sub" / "file.txt").write_text("Kingfishers dive for small fish.", encoding="utf-8")
    other = tmp_path / "other" / "deep"
    other.mkdir(parents=True)
    (other / "single.txt").write_text("Ospreys carry fish head first.", encoding="utf-8")
    ws = tmp_path / "ws"
    ingest([docs], ws, embedder=embedder)

    names = SourceNames(Workspace(ws))
    sources = {r["source"] for r in ChunkStore(ws).scan(["source"]).to_pylist()}
    assert {names.show(s) for s in sources} == {"top.txt", "sub/file.txt"}
    assert str(tmp_path) not in json.dumps(sorted(names.show(s) for s in sources))

    # A second run with a file argument adds that file's folder; the first run's root stays (the manifest used to be
    # overwritten, so serve fell back to bare file names for everything ingested earlier).
    ingest([other / "single.txt"], ws, embedder=embedder)
    ingest([docs], ws, embedder=embedder)
    roots = Workspace(ws).read_manifest("ingest")["extra"]["roots"]
    assert roots == [str(docs.resolve()), str(other.resolve())]  # accumulated, de-duplicated, in first-seen order
    sources = {r["source"] for r in ChunkStore(ws).scan(["source"]).to_pylist()}
    assert {names.show(s) for s in sources} == {"top.txt", "sub/file.txt", "single.txt"}

    # --rebuild starts the index afresh, and its roots with it.
    ingest([other], ws, embedder=embedder, rebuild=True)
    assert Workspace(ws).read_manifest("ingest")["extra"]["roots"] == [str(other.resolve())]
