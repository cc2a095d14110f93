"""(question, positive, negatives) pairs for retriever training (`ragtune synth pairs`), without an index."""

from __future__ import annotations

from ragtune.synth.pairs import PairsConfig, build_pairs
from ragtune.synth.store import read_pairs


def test_pairs_without_index(hotpot_raft, tmp_path):
    ws, _ = hotpot_raft
    summary = build_pairs(ws, PairsConfig(negatives=3, mine=False), out=tmp_path / "pairs.jsonl")
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    assert len(pairs) == summary.examples_total > 500
    for p in pairs:
        assert p.positive and p.positive not in p.negatives and p.positive_id not in p.negative_ids
        assert len(set(p.negative_ids)) == len(p.negative_ids)
