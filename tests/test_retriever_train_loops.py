"""Issue 19 on a real tiny index (8 bundled HotpotQA questions, ~80 chunks): LSR taught by an adapter-carrying LM
and mixed with gold labels, corpus-only (ICT / cropping) adaptation, the distilled reranker and its gate.

Real models throughout: bundled MiniLM and SmolLM2; the LoRA adapter (test_llm_engines' fixture) is a real PEFT
adapter with random B weights standing for a RAFT-trained one (training one here would cost minutes). A few fixed
steps each.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_llm_engines import adapter  # noqa: F401  (a real PEFT LoRA on SmolLM2 with random B)
from test_train_retriever import _vectors, tiny_ws  # noqa: F401  (the shared tiny index fixture)
from typer.testing import CliRunner

from ragtune.config import SearchConfig
from ragtune.index.retriever import load_spec
from ragtune.index.store import ChunkStore
from ragtune.retrieve.search import Searcher

QUESTION = "Which magazine was started first, Arthur's Magazine or First for Women?"


def test_the_adapter_changes_the_lm_scores_and_gets_its_own_cache(tiny_ws, adapter):  # noqa: F811
    from ragtune.train.retriever.lsr import lm_identity, load_scorer
    from ragtune.train.retriever.lsr_teacher import lm_gold_first

    raft = tiny_ws / "synth" / "raft.jsonl"
    base = lm_gold_first(tiny_ws, raft, n=4, top_k=3, split="all")
    tuned = lm_gold_first(tiny_ws, raft, adapter=adapter, n=4, top_k=3, split="all")
    assert base["n"] == tuned["n"] == 4 and base["retriever_top_is_gold"] == tuned["retriever_top_is_gold"]
    assert 0 <= tuned["lm_top_is_gold"] <= tuned["gold_in_candidates"] <= 4
    assert base["lm"] != tuned["lm"] and tuned["lm"].startswith(base["lm"] + "+lora-")
    caches = {p.name: [json.loads(x)["score"] for x in p.read_text().splitlines()]
              for p in (tiny_ws / "train" / "lsr-cache").glob("*.jsonl")}
    assert len(caches) >= 2
    base_scores = next(v for k, v in caches.items() if "lora" not in k)[:12]
    tuned_scores = next(v for k, v in caches.items() if "lora" in k)[:12]
    assert len(tuned_scores) == 12 and not np.allclose(base_scores, tuned_scores, atol=1e-3)  # the LoRA is live
    assert lm_identity(load_scorer(None, adapter)) == tuned["lm"]
    with pytest.raises(FileNotFoundError, match="not a PEFT LoRA adapter"):
        load_scorer(None, str(tiny_ws))


def test_lsr_with_the_tuned_lm_and_gold_weight_trains_and_lowers_its_loss(tiny_ws, adapter, tmp_path):  # noqa: F811
    from ragtune.train.retriever.lsr import LSRConfig, train_lsr

    out = tmp_path / "lsr-tuned"
    config = LSRConfig(top_k=3, limit=4, batch_size=4, max_steps=8, lr=2e-4, lm_adapter=adapter, gold_weight=0.5)
    result = train_lsr(tiny_ws, tiny_ws / "synth" / "raft.jsonl", config, out=out)
    assert result.steps == 8 and len(result.losses) == 8 and all(map(math.isfinite, result.losses))
    assert result.losses[-1] < result.losses[0]  # one fixed batch, eight steps: the mixed loss must fall
    assert "+lora-" in result.extra["lm"] and result.extra["gold_weight"] == 0.5
    assert load_spec(out).kind == "query-tower"
    tuned = Searcher(tiny_ws, SearchConfig(retriever=str(out)))
    assert not np.allclose(Searcher(tiny_ws).query_embedder.encode_query(QUESTION),
                           tuned.query_embedder.encode_query(QUESTION), atol=1e-4)


def test_pair_negatives_drop_the_source_document_and_the_too_close(tiny_ws):  # noqa: F811
    from ragtune.index.settings import index_text
    from ragtune.synth.pairs_unsupervised import CorpusChunk, build_corpus_pairs
    from ragtune.train.retriever.data import IndexChunks
    from ragtune.train.retriever.unsupervised import mine_pair_negatives

    searcher = Searcher(tiny_ws)
    chunks = IndexChunks(searcher)
    corpus = [CorpusChunk(c, d, t, x) for c, d, t, x in zip(chunks.ids, chunks.doc_ids, chunks.titles, chunks.texts,
                                                            strict=True)]
    pairs = build_corpus_pairs(corpus, ["ict", "crop"], max_pairs=24, seed=0)
    q = searcher.embedder.encode([p.query for p in pairs])
    pv = searcher.embedder.encode([index_text(p.title, p.positive, chunks.embed_title) for p in pairs])
    loose = mine_pair_negatives(chunks, pairs, q, pv, n=3, depth=20, relative_margin=0.0)
    strict = mine_pair_negatives(chunks, pairs, q, pv, n=3, depth=20, relative_margin=0.3)
    assert strict.counts["dropped_margin"] > loose.counts["dropped_margin"]
    for mined, margin in ((loose, 0.0), (strict, 0.3)):
        for pair, negatives, masked, qv, pvv in zip(pairs, mined.negatives, mined.masked, q, pv, strict=True):
            assert chunks.row[pair.chunk_id] in masked  # the source chunk holds the query: never a negative
            assert not {chunks.doc_ids[chunks.row[c]] for c in negatives} & {pair.doc_id}
            for c in negatives:
                assert float(searcher.vectors([c])[0] @ qv) <= (1 - margin) * float(pvv @ qv) + 1e-6


def test_unsupervised_query_tower_learns_from_the_corpus_alone(tiny_ws, tmp_path):  # noqa: F811
    from ragtune.train.retriever.unsupervised import UnsupervisedConfig, train_unsupervised

    before = _vectors(tiny_ws)
    version = ChunkStore(tiny_ws).version
    out = tmp_path / "unsup"
    result = train_unsupervised(tiny_ws, UnsupervisedConfig(max_pairs=8, batch_size=8, max_steps=6, lr=2e-4),
                                out=out, eval_data=tiny_ws / "synth" / "raft.jsonl")
    assert result.steps == 6 and result.losses[-1] < result.losses[0]
    assert result.counts["pairs"] == 8 and result.counts["pairs_ict"] + result.counts["pairs_crop"] == 8
    assert result.counts["masked_same_doc"] >= 8
    assert (out / "pairs.jsonl").stat().st_mode & 0o777 == 0o600
    spec = load_spec(out)
    assert spec.kind == "query-tower" and spec.method == "unsupervised"
    assert ChunkStore(tiny_ws).version == version and all(np.array_equal(before[c], v)
                                                          for c, v in _vectors(tiny_ws).items())
    assert result.before and result.after  # the eval-split questions of the RAFT file, before and after
    tuned = Searcher(tiny_ws, SearchConfig(retriever=str(out)))
    assert len(tuned.search(QUESTION, k=3, mode="dense")) == 3


def test_unsupervised_hybrid_target_distils_the_hybrid_ranking(tiny_ws, tmp_path):  # noqa: F811
    from ragtune.train.retriever.unsupervised import UnsupervisedConfig, hybrid_rank_dataset, train_unsupervised

    searcher = Searcher(tiny_ws)
    query = "Arthur's Magazine was an American literary periodical"
    dataset, vectors, counts = hybrid_rank_dataset(searcher, [query, QUESTION], k=5)
    assert counts == {"hybrid_taught": 2, "hybrid_short": 0} and len(dataset) == 2
    hybrid_top = [h.chunk_id for h in searcher.search(query, k=5, mode="hybrid")]
    rows, scores = dataset[0]["label"]
    assert scores == [0.0, -1.0, -2.0, -3.0, -4.0]  # the teacher's ranks, best first
    ids = sorted({h.chunk_id for q in (query, QUESTION) for h in searcher.search(q, k=5, mode="hybrid")})
    assert [ids[int(r)] for r in rows] == hybrid_top and vectors.shape == (len(ids), 384)

    before = _vectors(tiny_ws)
    out = tmp_path / "hyb"
    result = train_unsupervised(tiny_ws, UnsupervisedConfig(target="hybrid", pairs=["ict"], max_pairs=8,
                                                            teacher_k=5, batch_size=4, max_steps=4, lr=2e-4),
                                out=out)
    assert result.steps == 4 and result.counts["hybrid_taught"] == result.counts["pairs"] == 8
    assert "masked_same_doc" not in result.counts  # no negatives are mined for this target
    assert result.extra["target"] == "hybrid" and load_spec(out).kind == "query-tower"
    assert all(np.array_equal(before[c], v) for c, v in _vectors(tiny_ws).items())
    with pytest.raises(ValueError, match="query tower"):
        train_unsupervised(tiny_ws, UnsupervisedConfig(target="hybrid", tower="both"), out=tmp_path / "x")


def test_unsupervised_both_towers_reembeds(tiny_ws, tmp_path):  # noqa: F811
    import shutil

    from ragtune.train.retriever.unsupervised import UnsupervisedConfig, train_unsupervised

    ws = tmp_path / "ws"
    shutil.copytree(tiny_ws, ws)
    result = train_unsupervised(ws, UnsupervisedConfig(tower="both", pairs=["crop"], max_pairs=8, negatives=1,
                                                       batch_size=4, max_steps=2), out=tmp_path / "both")
    assert result.steps == 2 and result.counts["reembedded"] == len(_vectors(ws))
    assert load_spec(tmp_path / "both").kind == "dual-encoder"


def test_distilled_reranker_and_its_calibrated_gate(tiny_ws, tmp_path):  # noqa: F811
    from ragtune.index.rerank import Reranker
    from ragtune.train.retriever.rerank_gate import calibrate_gate, gated_search
    from ragtune.train.retriever.reranker import RerankerConfig, train_reranker

    raft = tiny_ws / "synth" / "raft.jsonl"
    out = tmp_path / "rr"
    config = RerankerConfig(loss="distill", limit=4, negatives=2, lsr_weight=0.5, max_steps=3, batch_size=2)
    result = train_reranker(tiny_ws, raft, config, out=out)
    assert result.steps == 3 and all(map(math.isfinite, result.losses))
    assert result.counts["rows"] == 4 and result.counts["lm_scored"] + result.counts["lm_cached"] > 0
    spec = json.loads((out / "reranker.json").read_text())
    assert spec["loss"] == "distill" and spec["first_stage"] == "hybrid"

    report = calibrate_gate(tiny_ws, out, raft, mode="hybrid", candidates=8, k=5)
    t = report.train
    assert t["n"] > 0 and t["gated"] >= max(t["first_stage"], t["always"]) - 1e-9  # the gate is chosen on these
    assert 0.0 <= t["rerank_share"] <= 1.0
    saved = json.loads((out / "reranker.json").read_text())["gate"]
    assert saved["mode"] == "hybrid" and saved["candidates"] == 8
    threshold = None if math.isinf(report.threshold) else report.threshold
    hits = gated_search(Searcher(tiny_ws), Reranker(str(out)), QUESTION, 4, threshold, candidates=8)
    assert len(hits) == 4

    # Every search that loads the folder applies its gate: set one this query falls on either side of
    from ragtune.index.rerank import top_margin

    first = Searcher(tiny_ws).search(QUESTION, k=8, mode="hybrid")
    margin = top_margin(first)
    assert math.isfinite(margin)
    reranked = [h.chunk_id for h in Reranker(str(out)).rerank(QUESTION, first, 4)]
    assert reranked != [h.chunk_id for h in first[:4]]  # else the test could not tell the two apart

    def search(threshold, gate=True, mode="hybrid"):
        spec = json.loads((out / "reranker.json").read_text())
        spec["gate"] = {**spec["gate"], "threshold": threshold}
        (out / "reranker.json").write_text(json.dumps(spec))
        searcher = Searcher(tiny_ws, SearchConfig(reranker=str(out), rerank_candidates=8, rerank_gate=gate))
        hits = searcher.search(QUESTION, k=4, mode=mode)
        return [h.chunk_id for h in hits], searcher.pipeline.last_trace["reranked"]

    certain = margin / 2 if margin > 0 else 0.0  # the margin is not below it: the first stage is trusted
    assert search(certain) == ([h.chunk_id for h in first[:4]], False)
    assert search(margin * 2 + 1.0) == (reranked, True)  # uncertain: reranked
    assert search(None) == (reranked, True)  # calibrated to "always"
    assert search(certain, gate=False) == (reranked, True)  # --no-rerank-gate
    assert search(certain, mode="dense")[1] is True  # a hybrid gate says nothing about dense margins
    from ragtune.cli import app

    r = CliRunner().invoke(app, ["search", QUESTION, "-w", str(tiny_ws), "-k", "4", "--rerank", str(out),
                                 "--rerank-candidates", "8", "--no-rerank-gate", "--json"])
    assert r.exit_code == 0, r.output
    assert [h["chunk_id"] for h in json.loads(r.stdout)] == reranked


def test_cli_runs_unsupervised_and_checks_lsr_options(tiny_ws, tmp_path):  # noqa: F811
    from ragtune.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["train", "retriever", "-w", str(tiny_ws), "--method", "unsupervised", "--pairs", "ict",
                            "--max-pairs", "6", "--batch-size", "3", "--steps", "2", "--out", str(tmp_path / "u")])
    assert r.exit_code == 0, r.output
    assert load_spec(tmp_path / "u").method == "unsupervised"
    r = runner.invoke(app, ["train", "retriever", "-w", str(tiny_ws), "--method", "unsupervised", "--target",
                            "hybrid", "--tower", "both", "--out", str(tmp_path / "v")])
    assert r.exit_code != 0 and "use tower='query'" in r.output
    r = runner.invoke(app, ["train", "retriever", "-w", str(tiny_ws), "--method", "lsr"])
    assert r.exit_code == 2 and "needs --data" in r.output
    raft = str(tiny_ws / "synth" / "raft.jsonl")
    r = runner.invoke(app, ["train", "retriever", "-w", str(tiny_ws), "--data", raft, "--gold-weight", "2"])
    assert r.exit_code == 2 and "gold-weight" in r.output
    r = runner.invoke(app, ["train", "retriever", "-w", str(tiny_ws), "--data", raft, "--lm-adapter", str(tmp_path)])
    assert r.exit_code == 2 and "not a PEFT LoRA adapter" in r.output
