"""BEIR-format data: the reader, the held-out split, the HotpotQA conversion, and ingest keeping BEIR's ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOTPOT_MINI, ROOT, SHARED_DATA

from ragtune.datasets import DatasetError, load_hotpotqa
from ragtune.datasets.beir import (
    from_qa_items,
    held_out,
    is_beir_folder,
    load_beir,
    read_qrels,
    training_pairs,
    write_beir,
)
from ragtune.splits import split_of

MINI = ROOT / "tests" / "data" / "beir_hotpotqa_mini"
SCIFACT = SHARED_DATA / "scifact_train"


def test_reads_the_bundled_sample():
    data = load_beir(MINI)
    assert is_beir_folder(MINI)
    assert len(data.corpus) == 48 and len(data.queries) == 12
    assert set(data.qrels) == {"train", "test"}
    queries, qrels = data.split("test")
    assert len(queries) == 6 and [q.query_id for q in queries] == sorted(qrels)
    assert all(split_of(q.query_id) == "eval" for q in queries)  # test = the questions ragtune's split holds out
    assert all(len(docs) == 2 and set(docs) <= set(data.corpus) for docs in qrels.values())
    with pytest.raises(DatasetError, match="no qrels for split 'dev'"):
        data.split("dev")


def test_qrels_header_trec_columns_and_bad_lines(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td3\t1\n", encoding="utf-8")
    assert read_qrels(path) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    path.write_text("q1 0 d1 1\n", encoding="utf-8")  # TREC's four columns
    assert read_qrels(path) == {"q1": {"d1": 1}}
    path.write_text("q1\td1\t1\nq2\td2\tmaybe\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"q.tsv:2: score 'maybe'"):
        read_qrels(path)


def test_judged_but_irrelevant_queries_are_not_evaluated(tmp_path):
    from ragtune.datasets.beir import BeirDoc, BeirQuery

    write_beir(tmp_path, [BeirDoc(doc_id="d1", text="one"), BeirDoc(doc_id="d2", title="Only a title", text="")],
               [BeirQuery(query_id="q1", text="first?"), BeirQuery(query_id="q2", text="second?")],
               {"test": {"q1": {"d1": 1}, "q2": {"d1": 0}, "q9": {"d1": 1}}})
    data = load_beir(tmp_path)
    queries, qrels = data.split("test")
    assert [q.query_id for q in queries] == ["q1"] and set(qrels) == {"q1"}  # q2: nothing relevant; q9: no query
    assert data.corpus["d2"].text == "Only a title"  # a title-only line is its title


def test_held_out_is_seeded_by_query_and_disjoint():
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(1000)}
    train, test = held_out(qrels, share=0.2, seed=0)
    assert set(train) | set(test) == set(qrels) and not set(train) & set(test)
    assert 150 <= len(test) <= 250
    assert held_out(qrels, share=0.2, seed=0) == (train, test)  # deterministic
    assert set(held_out(qrels, share=0.2, seed=1)[1]) != set(test)  # the seed matters
    # by query: a query's side does not depend on which other queries exist
    _, fewer = held_out({q: qrels[q] for q in list(qrels)[:100]}, share=0.2, seed=0)
    assert set(fewer) == {q for q in test if q in list(qrels)[:100]}


def test_hotpotqa_conversion_keeps_ingest_ids_and_the_question_split():
    items = load_hotpotqa(HOTPOT_MINI)
    docs, queries, qrels = from_qa_items(items)
    from ragtune.corpus.loaders import LoadOptions, LoadReport, load_file

    ingested = {d.doc_id for d in load_file(HOTPOT_MINI, LoadOptions(), LoadReport())}
    assert {d.doc_id for d in docs} == ingested  # same ids whether the JSON or the BEIR copy is ingested
    assert len(queries) == 100 and len(qrels["test"]) == 14 and len(qrels["train"]) == 86
    assert all(split_of(q) == "eval" for q in qrels["test"])
    gold = {it.id: {d.doc_id for d in it.gold_docs} for it in items}
    assert all(set(qrels["test"][q]) == gold[q] for q in qrels["test"])


def test_build_script_is_deterministic(tmp_path):
    def build(out: Path) -> dict[str, bytes]:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_beir.py"), "hotpotqa", str(HOTPOT_MINI),
                        str(out), "--questions", "6", "--distractors", "2"], check=True, capture_output=True)
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    first = build(tmp_path / "a")
    assert first == build(tmp_path / "b")
    committed = {p.relative_to(MINI).as_posix(): p.read_bytes() for p in sorted(MINI.rglob("*")) if p.is_file()}
    assert {k: v for k, v in first.items() if k != "README.md"} == {
        k: v for k, v in committed.items() if k != "README.md"}  # the committed sample is what the script writes


def test_training_pairs_are_pair_examples_of_the_train_split():
    from ragtune.synth.records import PairExample

    data = load_beir(MINI)
    rows = training_pairs(data, "train")
    assert len(rows) == 12  # 6 train questions x 2 gold paragraphs
    pairs = [PairExample.model_validate(r) for r in rows]
    assert {p.id for p in pairs} == set(data.qrels["train"])
    assert all(p.positive == data.corpus[p.positive_id].text and p.split == "train" for p in pairs)


def test_ingest_of_a_beir_folder_keeps_its_ids(tmp_path, embedder):
    from ragtune.index.ingest import ingest
    from ragtune.index.store import ChunkStore
    from ragtune.workspace import Workspace

    folder = tmp_path / "beir"
    docs = json.loads(json.dumps([{"_id": "doc-1", "title": "Alpha", "text": "Alpha is a letter."},
                                  {"_id": "doc-2", "title": "Beta", "text": "Beta follows alpha."}]))
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "What is alpha?"}) + "\n",
                                          encoding="utf-8")
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tdoc-1\t1\n", encoding="utf-8")
    summary = ingest([folder], tmp_path / "ws", embedder=embedder)
    assert summary.files_loaded == 1 and summary.documents == 2 and not summary.skipped  # queries/qrels not indexed
    table = ChunkStore(Workspace(tmp_path / "ws")).scan(["doc_id", "title"])
    assert sorted(table["doc_id"].to_pylist()) == ["doc-1", "doc-2"]
    # a corpus file alone needs --format beir (a plain JSONL file is records under path-derived ids)
    from ragtune.config import IngestConfig

    alone = tmp_path / "corpus_only"
    alone.mkdir()
    (alone / "docs.jsonl").write_text((folder / "corpus.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    ingest([alone], tmp_path / "ws2", IngestConfig(format="beir"), embedder=embedder)
    assert sorted(ChunkStore(Workspace(tmp_path / "ws2")).scan(["doc_id"])["doc_id"].to_pylist()) == ["doc-1",
                                                                                                        "doc-2"]


@pytest.mark.skipif(not SCIFACT.exists(), reason=f"{SCIFACT} is absent (only CI has ../shared)")
def test_real_scifact_train_split_and_its_held_out_part():
    data = load_beir(SCIFACT)
    assert len(data.corpus) == 5183 and len(data.queries) == 809
    assert sum(len(d) for d in data.qrels["train"].values()) == 919
    train, dev = held_out(data.qrels["train"], share=0.2, seed=0)
    assert (len(train), len(dev)) == (656, 153)  # the split benchmarks/retriever.py and scripts/build_beir.py use
    queries, qrels = data.split("train")
    assert len(queries) == 809 and all(set(d) <= set(data.corpus) for d in qrels.values())
