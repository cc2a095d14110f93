"""`ragtune eval-retrieval` and `ragtune.eval.retrieval` on the bundled BEIR sample: a real index, real search, a
real trained retriever and a real (LLM) reranker; the scores are checked against the metrics recomputed by hand from
the rankings the searcher returns."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT
from typer.testing import CliRunner

from ragtune import metrics
from ragtune.cli import app
from ragtune.config import SearchConfig
from ragtune.datasets.beir import load_beir, training_pairs
from ragtune.eval.retrieval import RetrievalEvalConfig, evaluate_retrieval, ranked_docs
from ragtune.retrieve.search import Searcher

MINI = ROOT / "tests" / "data" / "beir_hotpotqa_mini"


@pytest.fixture(scope="module")
def beir_ws(tmp_path_factory, embedder):
    from ragtune.index.ingest import ingest

    ws = tmp_path_factory.mktemp("beir_ws")
    ingest([MINI], ws, embedder=embedder)
    return ws


def test_scores_are_the_metrics_of_the_rankings(beir_ws):
    data = load_beir(MINI, corpus=False)
    queries, qrels = data.split("test")
    report = evaluate_retrieval(beir_ws, queries, qrels, RetrievalEvalConfig(modes=["dense", "bm25"]),
                                keep_per_query=True)
    assert report.coverage["indexed"] == report.coverage["relevant_docs"] == 12
    searcher = Searcher(beir_ws)
    for mode in ("dense", "bm25"):
        rows = [metrics.beir_metrics(ranked_docs(searcher, q.text, mode, 100), qrels[q.query_id]) for q in queries]
        expected = metrics.mean_metrics(rows)
        got = report.results["base"][mode]
        assert {k: got[k] for k in metrics.BEIR_METRICS} == pytest.approx(expected)
        assert got["n"] == 6
    # 48 documents: every one is ranked, so recall@100 is 1 and the ranking holds the whole corpus once
    assert report.results["base"]["dense"]["recall@100"] == 1.0
    ranking = ranked_docs(searcher, queries[0].text, "dense", 100)
    assert len(ranking) == len(set(ranking)) == 48
    assert 0.3 < report.results["base"]["dense"]["ndcg@10"] <= 1.0


def test_cli_json_with_a_trained_retriever_and_a_reranker(beir_ws, tmp_path):
    from ragtune.train.retriever.contrastive import ContrastiveConfig, train_contrastive

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in training_pairs(load_beir(MINI), "train")),
                     encoding="utf-8")
    out = tmp_path / "tuned"
    train_contrastive(beir_ws, pairs, ContrastiveConfig(epochs=1, batch_size=4), out=out)
    runner = CliRunner()
    result = runner.invoke(app, ["eval-retrieval", str(MINI), "-w", str(beir_ws), "--mode", "dense", "--mode",
                                 "bm25", "--retriever", f"tuned={out}", "--rerank", "llm:", "--rerank-candidates", "3",
                                 "--limit", "2", "--json", "--out", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload == json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert payload["split"] == "test" and payload["queries"] == 2
    results = payload["results"]
    assert set(results) == {"base", "tuned"}
    assert set(results["base"]) == {"dense", "dense+rerank", "bm25", "bm25+rerank"}
    assert set(results["tuned"]) == {"dense", "dense+rerank"}  # BM25 does not read the query encoder
    for modes in results.values():
        for scores in modes.values():
            assert set(metrics.BEIR_METRICS) <= set(scores) and all(0 <= scores[m] <= 1 for m in metrics.BEIR_METRICS)
    # the reranker reorders the top 3 documents only: the rest of the ranking, and so recall@100, is the first stage's
    assert results["base"]["dense+rerank"]["recall@100"] == results["base"]["dense"]["recall@100"]


def test_reranking_keeps_the_tail_of_the_first_stage(beir_ws):
    from ragtune.eval.retrieval import reranked_docs

    query = load_beir(MINI, corpus=False).split("test")[0][0].text
    first = ranked_docs(Searcher(beir_ws), query, "dense", 100)
    reranker = Searcher(beir_ws, SearchConfig(reranker="llm:", rerank_candidates=4))
    ranking = reranked_docs(first, reranker, query, "dense", 4)
    assert set(ranking[:4]) == set(first[:4]) and ranking[4:] == first[4:]


def test_cli_errors(beir_ws, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval-retrieval", str(MINI), "-w", str(beir_ws), "--split", "dev"])
    assert result.exit_code == 2 and "no qrels/dev.tsv" in result.output
    result = runner.invoke(app, ["eval-retrieval", str(MINI), "-w", str(beir_ws), "--mode", "sparse"])
    assert result.exit_code == 2 and "--mode 'sparse'" in result.output
    result = runner.invoke(app, ["eval-retrieval", str(MINI), "-w", str(beir_ws), "--retriever", str(tmp_path / "no")])
    assert result.exit_code == 2 and "no such retriever folder" in result.output
    # a corpus that is not in the index is said to be missing, not silently scored 0
    empty = tmp_path / "other_ws"
    shutil.copytree(beir_ws, empty)
    other = tmp_path / "other_beir"
    shutil.copytree(MINI, other)
    (other / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n5a71214d5542994082a3e5b9\tnot-indexed\t1\n",
                                              encoding="utf-8")
    result = runner.invoke(app, ["eval-retrieval", str(other), "-w", str(empty), "--mode", "bm25"])
    assert result.exit_code == 0 and "0 of 1 relevant documents are in the index" in result.output


def test_help_names_the_metrics_and_the_other_eval():
    result = CliRunner().invoke(app, ["eval-retrieval", "--help"])
    assert result.exit_code == 0
    for text in ("nDCG@10", "recall@100", "MRR@10", "eval --setting retrieved"):
        assert text in result.output
