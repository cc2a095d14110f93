"""Issue 19's retriever-training pieces that need no model: corpus pairs (ICT, cropping), LSR mixed with the gold
loss, the reranker's distillation target, and the rerank gate's threshold choice."""

from __future__ import annotations

import math
import random

import pytest
import torch

from ragtune.synth.pairs_unsupervised import CorpusChunk, build_corpus_pairs, crop_pair, ict_pair, write_corpus_pairs
from ragtune.train.retriever.losses import LSRLoss, frozen_index_nce, lsr_kl
from ragtune.train.retriever.rerank_gate import NEVER, Outcome, choose_threshold, gate_scores
from ragtune.train.retriever.reranker import distill_targets

TEXT = ("The Zeppelin museum opened in Friedrichshafen in 1996. It shows the history of rigid airships. "
        "Its largest exhibit is a walk-through replica of the Hindenburg. The building was a harbour station.")
CHUNK = CorpusChunk("c1", "d1", "Zeppelin Museum", TEXT)


def test_ict_query_is_one_sentence_and_the_positive_is_the_chunk_without_it():
    seen = set()
    for seed in range(12):
        pair = ict_pair(CHUNK, random.Random(seed))
        assert pair is not None and pair.kind == "ict" and (pair.chunk_id, pair.doc_id) == ("c1", "d1")
        assert pair.query in TEXT and pair.query.endswith(".")
        assert pair.query not in pair.positive  # the point of ICT: no word-overlap shortcut
        assert len(pair.positive.split()) + len(pair.query.split()) == len(TEXT.split())  # nothing else removed
        seen.add(pair.query)
    assert len(seen) >= 3  # the sentence is drawn at random, not always the first
    assert ict_pair(CorpusChunk("c2", "d2", "", "One sentence only here, nothing more."), random.Random(0)) is None


def test_crops_are_independent_spans_of_the_chunk():
    words = TEXT.split()
    pair = crop_pair(CHUNK, random.Random(3))
    assert pair is not None and pair.query != pair.positive
    for span in (pair.query, pair.positive):
        n = len(span.split())
        assert 5 <= n <= len(words) // 2 and span in " ".join(words)
    assert crop_pair(CorpusChunk("c3", "d3", "", "too short to crop twice"), random.Random(0)) is None


def test_pairs_are_seeded_per_chunk_and_capped(tmp_path):
    chunks = [CorpusChunk(f"c{i}", f"d{i // 2}", "", TEXT) for i in range(10)]
    pairs = build_corpus_pairs(chunks, ["ict", "crop"], seed=1)
    assert len(pairs) == 20 and {p.kind for p in pairs} == {"ict", "crop"}
    again = build_corpus_pairs(list(reversed(chunks)), ["crop", "ict"], seed=1)
    assert {(p.id, p.query) for p in pairs} == {(p.id, p.query) for p in again}  # order does not matter
    other = build_corpus_pairs(chunks, ["ict"], seed=2)
    assert {p.id: p.query for p in other} != {p.id: p.query for p in pairs if p.kind == "ict"}
    assert len(build_corpus_pairs(chunks, ["ict"], max_pairs=4, seed=1)) == 4
    with pytest.raises(ValueError, match="unknown pair kind"):
        build_corpus_pairs(chunks, ["cloze"])
    path = write_corpus_pairs(tmp_path / "p" / "pairs.jsonl", pairs)
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().splitlines()) == 20


class _Query(torch.nn.Module):
    def __init__(self, vec):
        super().__init__()
        self.vec = torch.nn.Parameter(torch.tensor(vec))

    def forward(self, features):
        return {"sentence_embedding": self.vec}


def test_lsr_loss_mixes_kl_with_the_gold_infonce():
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.2]])
    query = [[0.9, 0.1], [0.2, 0.8]]
    # rows: candidates (k=2), their LM scores, gold rows, masked rows; padded to width 3 with -1
    labels = torch.tensor([
        [[0.0, 1.0, -1.0], [-5.0, -1.0, 0.0], [3.0, -1.0, -1.0], [2.0, -1.0, -1.0]],
        [[1.0, 2.0, -1.0], [-2.0, -3.0, 0.0], [1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]],
    ])
    w = 0.3
    loss = LSRLoss(_Query(query), docs, tau=0.5, temperature=0.05, gold_weight=w, scale=20.0)([{}], labels)
    q = torch.nn.functional.normalize(torch.tensor(query), dim=-1)
    d = torch.nn.functional.normalize(docs, dim=-1)
    sim = torch.stack([q[0] @ d[[0, 1]].T, q[1] @ d[[1, 2]].T])
    kl = lsr_kl(sim, torch.tensor([[-5.0, -1.0], [-2.0, -3.0]]), 0.5, 0.05)
    nce = frozen_index_nce(20.0 * q @ d.T, labels[:, 2:4, :])
    assert torch.allclose(loss, (1 - w) * kl + w * nce, atol=1e-5)
    assert not torch.allclose(kl, nce, atol=1e-3)  # the mix is not trivially one of them
    plain = LSRLoss(_Query(query), docs, tau=0.5, temperature=0.05)([{}], labels[:, :2, :2])
    assert torch.allclose(plain, kl, atol=1e-5)  # gold_weight 0: LSR exactly as before
    with pytest.raises(ValueError, match="gold rows"):
        LSRLoss(_Query(query), docs, gold_weight=0.5)([{}], labels[:, :2, :2])
    with pytest.raises(ValueError, match="gold_weight"):
        LSRLoss(_Query(query), docs, gold_weight=1.5)


def test_distill_target_is_gold_mixed_with_p_lsr():
    gold_only = torch.tensor(distill_targets(2, [0.0, -9.0, -1.0, -2.0])).exp()
    assert torch.allclose(gold_only, torch.tensor([0.5, 0.5, 0.0, 0.0]), atol=1e-9)
    mixed = torch.tensor(distill_targets(1, [-3.0, -1.0, -50.0], lsr_weight=0.5, tau=1.0), dtype=torch.float64).exp()
    p_lsr = torch.softmax(torch.tensor([-3.0, -1.0, -50.0], dtype=torch.float64), 0)
    assert torch.allclose(mixed, 0.5 * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) + 0.5 * p_lsr, atol=1e-9)
    assert math.isclose(float(mixed.sum()), 1.0, abs_tol=1e-9) and mixed[1] > mixed[2]
    assert all(math.isfinite(x) for x in distill_targets(1, [0.0, 0.0]))  # no -inf for ListNet's softmax


def test_gate_threshold_reranks_exactly_where_the_reranker_wins_on_train():
    rows = [Outcome(0.05, 0.0, 1.0), Outcome(0.10, 0.2, 0.6), Outcome(0.50, 1.0, 0.3), Outcome(0.90, 0.8, 0.4)]
    t = choose_threshold(rows)
    assert 0.10 < t < 0.50  # rerank the two uncertain queries, keep the two confident ones
    s = gate_scores(rows, t)
    assert s["rerank_share"] == 0.5 and math.isclose(s["gated"], (1.0 + 0.6 + 1.0 + 0.8) / 4)
    assert s["gated"] > max(s["first_stage"], s["always"])
    assert choose_threshold([Outcome(0.1, 1.0, 0.0), Outcome(0.2, 0.5, 0.4)]) == NEVER  # reranking never helps
    assert math.isinf(choose_threshold([Outcome(0.1, 0.0, 1.0), Outcome(0.2, 0.4, 0.5)]))  # always helps
