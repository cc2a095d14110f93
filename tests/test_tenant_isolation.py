"""Tenant isolation under attack: documents claiming other tenants, documents with no tenant, widening filters and
other tenants' ids, on the real store, every search option and a real server (see tests/tenant_attacks.py).

The suite was run against the code before the typed tenant scope: 252 of its 2,016 in-process attacks leaked (a
record's `"tenant": "B"` field became the tag `tenant=B`, which the scope matched). Here every count must be zero.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tenant_attacks import (
    MARKERS,
    Report,
    build_attack_workspace,
    foreign,
    http_attacks,
    query_for,
    run_attacks,
    search_attacks,
    start_server,
    store_attacks,
)


@pytest.fixture(scope="module")
def aw(tmp_path_factory, embedder):
    return build_attack_workspace(tmp_path_factory.mktemp("attacks"), embedder)


def test_the_workspace_is_hostile(aw):
    """The premise: records that claim another tenant were ingested under their real one, untagged chunks exist, and
    an unscoped (operator) search does find every group's words, so a scoped search that finds none is isolation."""
    from ragtune.index.store import ChunkStore
    from ragtune.retrieve.search import Searcher

    rows = ChunkStore(aw.ws).scan(["tenant", "metadata", "tags"]).to_pylist()
    claims = [r for r in rows if r["tenant"] == "acme" and json.loads(r["metadata"]).get("tenant") == "globex"]
    assert claims and all("meta.tenant=globex" in r["tags"] for r in claims)
    assert all(t.startswith("meta.") for r in rows for t in r["tags"])  # nothing outside the user namespace
    assert {None, "acme", "globex"} <= set(aw.docs)
    unscoped = json.dumps([h.model_dump() for h in Searcher(aw.ws).search(query_for("globex"), k=30, mode="bm25")])
    assert MARKERS["acme"] in unscoped and MARKERS[None] in unscoped


def test_store_and_every_search_option_leak_nothing(aw, embedder):
    report = Report()
    store_attacks(aw, report)
    search_attacks(aw, embedder, report)
    summary = report.summary()
    assert summary["leaks"] == 0, summary["examples"]
    assert summary["attacks"] >= 2000 and summary["hits"] > 1000
    assert summary["empty"] == 0, report.empty  # every scoped search without extra filters found its own chunks
    assert len(summary["by_part"]) == 16  # 3 tables + 11 search configurations + 2 levels


def test_metadata_filters_narrow_inside_the_tenant(aw, embedder):
    """A user filter on a non-reserved key reads the metadata namespace; `meta.KEY` names a record's own field even
    when it is called `tenant`; a reserved key reads the typed column. None of them can leave the tenant."""
    from ragtune.retrieve.search import Searcher

    s = Searcher(aw.ws, embedder=embedder)
    q = "vault code budget"
    claimed = s.search(q, k=20, mode="bm25", filters={"tenant": "acme", "meta.tenant": "globex"})
    assert claimed and {h.doc_id for h in claimed} <= aw.docs["acme"]  # acme's own records that *claim* globex
    assert all(h.metadata.get("tenant") == "globex" for h in claimed)
    assert s.search(q, k=20, mode="bm25", filters={"tenant": "globex", "meta.tenant": "globex"}) == []
    fmt = s.search(q, k=50, mode="bm25", filters={"tenant": "globex", "format": "record"})
    assert fmt and {h.doc_id for h in fmt} <= aw.docs["globex"] and all(h.source.endswith(".jsonl") for h in fmt)
    assert s.search(q, k=5, mode="bm25", filters={"tenant": "acme", "version": "globex-v1"}) == []  # a field, not it
    spoofed = s.search(q, k=5, mode="bm25", filters={"tenant": "acme", "meta.version": "globex-v1"})
    assert spoofed and {h.metadata["record_id"] for h in spoofed} == {"a4"}


def test_sql_in_filter_values_is_only_ever_a_literal(aw):
    from ragtune.index.store import ChunkStore, filter_sql

    store = ChunkStore(aw.ws)
    for value in ("x' OR '1'='1", "\\' OR 1=1 --", "acme' OR tenant = 'globex", "') OR (1=1"):
        assert store.count({"tenant": value}) == 0
        assert store.count({"tenant": "acme", "title": value}) == 0
        assert store.count({"tenant": "acme", value: value}) == 0  # a key is inside a literal too
    assert filter_sql({"tenant": "a'b", "x": "1"}) == "tenant = 'a''b' AND (array_has(tags, 'meta.x=1') OR " \
        "array_has(tags, 'x=1'))"


def test_an_index_written_before_the_namespace_does_not_leak(tmp_path, embedder):
    """Old tags were bare `key=value`, metadata and standard fields alike, so an old row of acme's with a record
    field `tenant: globex` carries `tenant=globex`. The scope reads only the column; metadata filters still match
    the old bare form of a non-reserved key, so no re-ingest is needed (`ingest --rebuild` rewrites the tags)."""
    import pyarrow as pa

    from ragtune.config import IngestConfig
    from ragtune.index.ingest import ingest
    from ragtune.index.store import ChunkStore, schema
    from ragtune.retrieve.search import Searcher

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "g.txt").write_text("The globex whale sings.", encoding="utf-8")
    ws = tmp_path / "ws"
    ingest([docs], ws, IngestConfig(tenant="globex"), embedder=embedder)
    store = ChunkStore(ws)
    dim = embedder.dim
    old = [("old-acme", "acme", ["doc_id=old-acme", "tenant=acme", "tenant=globex", "format=record"]),
           ("old-none", None, ["doc_id=old-none", "tenant=globex", "format=record"])]
    vector = embedder.encode(["The acme whale sings."])[0]
    rows = {"chunk_id": [o[0] for o in old], "doc_id": [o[0] for o in old], "doc_key": ["k", "k"],
            "doc_hash": ["h", "h"], "source": ["/srv/old.jsonl"] * 2, "title": ["", ""],
            "text": ["The acme whale sings."] * 2, "start": [0, 0], "end": [21, 21], "tenant": [o[1] for o in old],
            "version": [None, None], "metadata": ['{"tenant": "globex", "format": "record"}'] * 2,
            "tags": [o[2] for o in old], "vector": [vector, vector]}
    store.table.add(pa.Table.from_pydict(rows, schema=schema(dim)))
    searcher = Searcher(ws, embedder=embedder)
    for mode in ("dense", "bm25", "hybrid"):
        seen = {h.chunk_id for h in searcher.search("acme whale sings", k=10, mode=mode, filters={"tenant": "globex"})}
        assert seen and not seen & {"old-acme", "old-none"}, mode
        acme = searcher.search("whale", k=10, mode=mode, filters={"tenant": "acme", "format": "record"})
        assert [h.chunk_id for h in acme] == ["old-acme"], mode  # the old bare metadata tag still filters
    assert store.count({"tenant": "globex"}) == 1 and store.count({"tenant": "acme", "format": "record"}) == 1


def test_display_source_never_shows_a_server_path():
    from ragtune.serve.scope import check_request_filters, display_source

    assert display_source("/srv/data/acme/sub/a.txt", ["/srv/data", "/srv/data/acme"]) == "sub/a.txt"
    assert display_source("/srv/data/acme/a.txt", ["/srv/data/acme/a.txt"]) == "a.txt"
    assert display_source("/srv/elsewhere/b.md", ["/srv/data"]) == "b.md"
    assert display_source("/srv/data-2/b.md", ["/srv/data"]) == "b.md"  # a sibling sharing a prefix is not under it
    assert display_source("hotpotqa:train", []) == "hotpotqa:train"
    for key in ("tenant", "Tenant", " TENANT "):
        with pytest.raises(ValueError, match="API key decides the tenant"):
            check_request_filters({key: "x"})
    check_request_filters({"meta.tenant": "x", "source": "a.txt"})


def test_the_operator_cli_filters_on_the_column(aw):
    """`ragtune search --filter tenant=acme` stays the operator's tool, through the typed column."""
    out = subprocess.run([sys.executable, "-m", "ragtune", "search", query_for("acme"), "-w", str(aw.ws), "-k", "10",
                          "--mode", "bm25", "--filter", "tenant=acme", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert hits and foreign("acme", aw, hits, [h["doc_id"] for h in hits]) is None


def test_run_attacks_entry_point_for_the_benchmark(tmp_path, embedder):
    result = run_attacks(tmp_path, embedder, parts=("store",))
    assert result["attacks"] == 144 and result["leaks"] == 0 and result["hits"] > 0
    with pytest.raises(ValueError, match="unknown attack parts"):
        run_attacks(tmp_path / "x", embedder, parts=("nope",))


@pytest.mark.slow
def test_a_real_server_leaks_nothing(aw):
    """Search, chat (plain and cached), feedback and curation against `ragtune serve` with sentence parents, hop and
    links on; the startup warning counts the untagged chunks that no key can reach."""
    import httpx

    server, keys = start_server(aw)
    try:
        report = Report()
        http_attacks(aw, server.url, keys, report)
        summary = report.summary()
        assert summary["leaks"] == 0, summary["examples"]
        assert summary["attacks"] >= 180 and summary["hits"] > 30 and summary["empty"] == 0, report.empty
        r = httpx.post(server.url + "/v1/search", json={"query": "acmesecret vault", "k": 5},
                       headers={"Authorization": f"Bearer {keys['acme']}"}, timeout=60)
        sources = {h["source"] for h in r.json()["data"]}
        assert sources == {"records.jsonl"}  # relative to the ingest root, never /tmp/...
        narrowed = httpx.post(server.url + "/v1/search", json={"query": "vault", "k": 5,
                                                              "filters": {"source": "records.jsonl"}},
                              headers={"Authorization": f"Bearer {keys['globex']}"}, timeout=60).json()["data"]
        assert narrowed and {h["doc_id"] for h in narrowed} <= aw.docs["globex"]  # the shown form filters
    finally:
        server.stop()
    from ragtune.index.store import ChunkStore

    tenants = ChunkStore(aw.ws).scan(["tenant"])["tenant"].to_pylist()
    untagged = sum(1 for t in tenants if not t)
    assert untagged > 0
    assert f"{untagged} of {len(tenants)} chunks have no tenant" in " ".join(server.log.read_text().split())
