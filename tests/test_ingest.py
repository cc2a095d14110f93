"""Ingestion into a real LanceDB + bm25s index: incremental updates, removal, resume after kill -9 / Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import HOTPOT_MINI, RAFT_SAMPLE_DOCS, needs_shared

from ragtune.config import IngestConfig
from ragtune.index.ingest import ingest
from ragtune.index.store import ChunkStore
from ragtune.retrieve.search import Searcher

RAGTUNE = [sys.executable, "-m", "ragtune"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """20 HotpotQA questions' paragraphs (~220 documents): enough commits to kill mid-way, quick to embed."""
    path = tmp_path_factory.mktemp("small") / "hotpot20.json"
    path.write_text(json.dumps(json.loads(HOTPOT_MINI.read_text())[:20]), encoding="utf-8")
    return path


def _chunk_ids(ws) -> list[str]:
    return ChunkStore(ws).scan(["chunk_id"])["chunk_id"].to_pylist()


def test_incremental_reindex(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keep.txt").write_text("Alpacas are domesticated camelids from South America.", encoding="utf-8")
    (docs / "change.txt").write_text("The zebrafish genome was sequenced in 2013.", encoding="utf-8")
    (docs / "remove.txt").write_text("Quokkas live on Rottnest Island.", encoding="utf-8")
    ws = tmp_path / "ws"
    first = ingest([docs], ws, embedder=embedder)
    assert (first.new, first.chunks_added, first.chunks_total) == (3, 3, 3)

    again = ingest([docs], ws, embedder=embedder)
    assert (again.new, again.unchanged, again.chunks_added) == (0, 3, 0)  # nothing re-embedded

    (docs / "change.txt").write_text("The medaka genome was sequenced in 2007.", encoding="utf-8")
    (docs / "remove.txt").unlink()
    (docs / "new.md").write_text("# Kakapo\n\nThe kakapo is a flightless parrot.", encoding="utf-8")
    third = ingest([docs], ws, embedder=embedder)
    assert (third.new, third.updated, third.unchanged, third.removed) == (1, 1, 1, 1)
    assert third.chunks_added == 2 and third.chunks_total == 3
    searcher = Searcher(ws, embedder=embedder)
    assert searcher.search("zebrafish", mode="bm25") == []  # the changed document's old chunk is gone
    assert searcher.search("quokkas Rottnest", mode="bm25") == []  # the removed document is gone
    assert searcher.search("medaka genome", k=1, mode="bm25")[0].source.endswith("change.txt")
    ids = _chunk_ids(ws)
    assert len(ids) == len(set(ids)) == 3

    # Another folder ingested into the same workspace does not prune the first one.
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("Axolotls regenerate limbs.", encoding="utf-8")
    fourth = ingest([other], ws, embedder=embedder)
    assert fourth.removed == 0 and fourth.chunks_total == 4

    # Manifest: inputs' hashes, config, versions, counts, timings.
    manifest = json.loads((ws / "manifests" / "ingest.json").read_text())
    assert manifest["counts"]["chunks_total"] == 4 and manifest["versions"]["lancedb"]
    assert list(manifest["inputs"]) == [str((other / "x.txt").resolve())] and manifest["timings"]["total_s"] > 0
    assert {"load_s", "chunk_s", "embed_s", "store_s", "lexical_s"} <= set(manifest["timings"])


def test_changing_the_chunker_rechunks(tmp_path, embedder):
    doc = tmp_path / "d.txt"
    doc.write_text(" ".join(f"Sentence number {i} talks about topic {i}." for i in range(60)), encoding="utf-8")
    ws = tmp_path / "ws"
    a = ingest([doc], ws, IngestConfig(chunker="sentences", chunk_size=200), embedder=embedder)
    b = ingest([doc], ws, IngestConfig(chunker="tokens", chunk_size=64, overlap=8), embedder=embedder)
    assert b.updated == 1 and b.chunks_total > a.chunks_total
    assert len(_chunk_ids(ws)) == b.chunks_total


def test_kill_9_mid_ingest_then_resume_loses_and_duplicates_nothing(tmp_path, small_corpus, embedder):
    ws_ref, ws = tmp_path / "ref", tmp_path / "killed"
    cmd = [*RAGTUNE, "ingest", str(small_corpus), "--commit-every", "32"]
    ingest([small_corpus], ws_ref, IngestConfig(commit_every=32), embedder=embedder)  # uninterrupted reference
    reference = Counter(_chunk_ids(ws_ref))

    proc = subprocess.Popen([*cmd, "--workspace", str(ws)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # wait until at least two commits landed, then kill without warning
            time.sleep(0.5)
            try:
                if len(_chunk_ids(ws)) >= 64:
                    break
            except Exception:
                continue
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = _chunk_ids(ws)
    assert 0 < len(partial) < sum(reference.values()), "the kill must land mid-ingest for this test to mean anything"
    subprocess.run([*cmd, "--workspace", str(ws)], check=True, capture_output=True, timeout=900)
    assert Counter(_chunk_ids(ws)) == reference  # same chunks, each exactly once


def test_ctrl_c_exits_cleanly_and_resumes(tmp_path, small_corpus):
    ws = tmp_path / "ws"
    cmd = [*RAGTUNE, "ingest", str(small_corpus), "--workspace", str(ws), "--commit-every", "32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            if len(_chunk_ids(ws)) >= 32:
                break
        except Exception:
            continue
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    ids = _chunk_ids(ws)
    assert len(ids) == len(set(ids)) and "unchanged" in done.stderr


def test_bad_input_via_cli_warns_and_ingests_the_rest(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("Narwhals have a long tusk.", encoding="utf-8")
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    (docs / "blob.bin").write_bytes(os.urandom(2048) + b"\x00" * 16)
    (docs / "empty.md").write_text("", encoding="utf-8")
    (docs / "bad-utf8.txt").write_bytes(b"Caf\xe9 menu: espresso and croissants.")
    (docs / "rows.jsonl").write_text('{"text": "first row"}\n{"text": broken\n{"text": "third row"}\n')
    result = subprocess.run(
        [*RAGTUNE, "ingest", str(docs), "--workspace", str(tmp_path / "ws")], capture_output=True, text=True,
        timeout=600, env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr
    for name in ("corrupt.pdf", "blob.bin", "empty.md", "bad-utf8.txt", "rows.jsonl:2"):
        assert name in err, f"no warning naming {name}:\n{err}"
    assert "ingested 3 files" in err and "skipped 3 files" in err
    hits = json.loads(subprocess.run(
        [*RAGTUNE, "search", "croissants", "--workspace", str(tmp_path / "ws"), "--json", "--mode", "bm25"],
        capture_output=True, text=True, check=True, timeout=300).stdout)
    assert hits and hits[0]["source"].endswith("bad-utf8.txt")


@needs_shared
def test_ingest_raft_sample_docs(tmp_path, embedder):
    ws = tmp_path / "ws"
    files = [RAFT_SAMPLE_DOCS / f for f in ("blog.txt", "UC_Berkeley_short.pdf", "apizoo.json")]
    summary = ingest(files, ws, embedder=embedder)
    assert summary.files_loaded == 3 and summary.documents == 81 and not summary.skipped
    searcher = Searcher(ws, embedder=embedder)
    top = searcher.search("What does RAFT train the model to ignore?", k=3)
    assert any(h.source.endswith("blog.txt") for h in top)
    top = searcher.search("When was the University of California, Berkeley founded?", k=3)
    assert any(h.source.endswith("UC_Berkeley_short.pdf") for h in top)
    api = searcher.search("get the Gmail profile of the user", k=3, filters={"format": "record"})
    assert all(h.source.endswith("apizoo.json") for h in api) and "Gmail" in api[0].title


def test_missing_path_and_bad_options_fail_clearly(tmp_path):
    r = subprocess.run([*RAGTUNE, "ingest", str(tmp_path / "nope"), "-w", str(tmp_path / "ws")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no such file" in r.stderr
    (tmp_path / "a.txt").write_text("hello", encoding="utf-8")
    r = subprocess.run([*RAGTUNE, "ingest", str(tmp_path / "a.txt"), "-w", str(tmp_path / "ws"), "--chunker", "words"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "chunker" in r.stderr and "Traceback" not in r.stderr


