"""BEIR's retrieval metrics (nDCG@10, recall@10/100, MRR@10) against values computed by hand, binary and graded."""

from __future__ import annotations

import math

import pytest

from ragtune import metrics

LOG2_3 = math.log2(3)


def test_binary_ndcg_recall_mrr_by_hand():
    ranked = ["x", "a", "y", "b"]  # relevant a at rank 2, b at rank 4
    gold = ["a", "b", "c"]
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg_at_k(ranked, gold, 10) == pytest.approx(dcg / idcg)  # 1.0616 / 2.1309
    assert metrics.ndcg_at_k(ranked, gold, 10) == pytest.approx(0.498189, abs=1e-6)
    assert metrics.recall_at_k(ranked, gold, 10) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(ranked, gold, 2) == pytest.approx(1 / 3)
    assert metrics.mrr(ranked, gold, 10) == pytest.approx(0.5)
    assert metrics.mrr(ranked, gold, 1) == 0.0  # the first relevant document is below the cut


def test_graded_ndcg_uses_scores_as_gains_like_pytrec_eval():
    # qrels: a=2, b=1, z=0 (judged, not relevant). Ranking: b, z, a.
    qrels = {"a": 2, "b": 1, "z": 0}
    ranked = ["b", "z", "a"]
    dcg = 1 / 1 + 0 + 2 / math.log2(4)  # = 2.0
    idcg = 2 / 1 + 1 / LOG2_3  # a first, then b = 2.6309
    assert metrics.ndcg_at_k(ranked, qrels, 10) == pytest.approx(dcg / idcg)
    assert metrics.ndcg_at_k(ranked, qrels, 10) == pytest.approx(0.760188, abs=1e-6)
    # a score of 0 is not relevant: z counts for nothing in recall or MRR
    assert metrics.recall_at_k(["z"], qrels, 10) == 0.0
    assert metrics.mrr(["z", "a"], qrels, 10) == pytest.approx(0.5)
    # the same ranking under binary relevance (a and b gain 1) scores differently: the grades matter
    assert metrics.ndcg_at_k(ranked, ["a", "b"], 10) == pytest.approx((1 + 0.5) / (1 + 1 / LOG2_3))


def test_chunks_of_one_document_count_once_at_the_best_rank():
    # ranks of chunks: a, a, b -> documents a (1), b (2)
    assert metrics.ndcg_at_k(["a", "a", "b"], {"b": 1}, 10) == pytest.approx(1 / LOG2_3)
    assert metrics.mrr(["a", "a", "b"], ["b"], 10) == pytest.approx(0.5)


def test_beir_metrics_cut_offs_and_mean():
    relevant = {f"d{i}": 1 for i in (5, 50, 150)}  # ranks 6, 51 and 151 in a ranking of 200 documents
    ranked = [f"d{i}" for i in range(200)]
    row = metrics.beir_metrics(ranked, relevant)
    assert set(row) == set(metrics.BEIR_METRICS)
    assert row["recall@10"] == pytest.approx(1 / 3)
    assert row["recall@100"] == pytest.approx(2 / 3)
    assert row["mrr@10"] == pytest.approx(1 / 6)
    assert row["ndcg@10"] == pytest.approx((1 / math.log2(7)) / (1 + 1 / LOG2_3 + 0.5))
    empty = metrics.beir_metrics(ranked, {"q": 0})  # nothing relevant: every metric 0, not a division by zero
    assert all(v == 0.0 for v in empty.values())
    mean = metrics.mean_metrics([row, empty])
    assert mean["recall@100"] == pytest.approx(1 / 3) and metrics.mean_metrics([]) == {}


def test_perfect_and_empty_rankings():
    assert metrics.ndcg_at_k(["a", "b"], ["a", "b"], 10) == pytest.approx(1.0)
    assert metrics.ndcg_at_k(["b", "a"], {"a": 3, "b": 3}, 10) == pytest.approx(1.0)  # equal grades: any order
    assert metrics.ndcg_at_k([], ["a"], 10) == 0.0
    assert metrics.recall_at_k([], ["a"], 10) == 0.0
