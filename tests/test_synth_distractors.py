"""Distractor choice and assembly (`ragtune.synth.distractors`): RAFT's P (oracle kept) and k (distractors shown)
over many draws, no distractor that copies or overlaps the oracle, and the oracle's position shuffled."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ragtune.records import ContextDoc
from ragtune.synth.distractors import DistractorPool, Exclusion, assemble, pick_distractors


def _pool(n: int) -> list[ContextDoc]:
    return [ContextDoc(doc_id=f"d{i}", text=f"document number {i} talks about topic {i % 37}") for i in range(n)]


@pytest.mark.parametrize("p,k", [(0.8, 3), (0.4, 1), (1.0, 4), (0.0, 2)])
def test_p_and_k_statistics(p, k):
    docs = _pool(60)
    # a duplicate of the oracle's text under another id, and a chunk overlapping the oracle: never distractors
    docs.append(ContextDoc(doc_id="copy", text=docs[0].text))
    docs.append(ContextDoc(doc_id="overlap", text="the oracle's neighbour chunk"))
    spans = {"overlap": ("parent", 50, 150)}
    pool = DistractorPool(docs, spans)
    oracle = docs[0].model_copy(update={"is_oracle": True})
    n, kept = 4000, 0
    for i in range(n):
        rng = random.Random(f"7:{i}")
        exclude = Exclusion([oracle], [("parent", 100, 200)])
        distractors = pick_distractors(rng, k + 1, exclude, pool)
        shown, oracle_kept = assemble(rng, [oracle], distractors, k, p)
        ids = [d.doc_id for d in shown]
        assert len(ids) == len(set(ids)), "a distractor twice"
        assert "copy" not in ids and "overlap" not in ids
        n_oracle = sum(d.is_oracle for d in shown)
        distractor_ids = [d.doc_id for d in shown if not d.is_oracle]
        assert oracle.doc_id not in distractor_ids
        if oracle_kept:
            kept += 1
            assert n_oracle == 1 and len(distractor_ids) == k
        else:
            assert n_oracle == 0 and len(distractor_ids) == k + 1
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept / n - p) <= 4 * sigma + 1e-9


def test_oracle_position_is_shuffled():
    pool = DistractorPool(_pool(30))
    oracle = ContextDoc(doc_id="o", text="the oracle", is_oracle=True)
    positions = Counter()
    for i in range(2000):
        rng = random.Random(i)
        shown, kept = assemble(rng, [oracle], pick_distractors(rng, 4, Exclusion([oracle]), pool), 3, 1.0)
        positions[[d.doc_id for d in shown].index("o")] += 1
    assert set(positions) == {0, 1, 2, 3}
    assert min(positions.values()) > 400
