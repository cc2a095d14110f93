"""Retriever training: the LSR loss, data loading, and LSR / contrastive / reranker runs on a real (tiny) index.

Real models (bundled MiniLM and SmolLM2), a real LanceDB index of 8 bundled HotpotQA questions' paragraphs (~80
chunks), and a few training steps each: these tests check wiring and invariants, benchmarks/retriever.py checks
quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import HOTPOT_MINI
from typer.testing import CliRunner

from ragtune.config import SearchConfig
from ragtune.index.retriever import RetrieverError, load_spec
from ragtune.index.settings import IndexSettings
from ragtune.index.store import ChunkStore
from ragtune.retrieve.search import Searcher
from ragtune.train.retriever.data import RetrieverDataError, load_questions
from ragtune.train.retriever.losses import LSRLoss, frozen_index_nce, lsr_kl
from ragtune.workspace import Workspace

# ---------------------------------------------------------------------------------------------------------------------
# The loss


def test_lsr_kl_is_kl_of_retriever_from_lm_distribution():
    sim = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.5, 0.3]])
    lm = torch.tensor([[-1.0, -3.0, -2.0], [-4.0, -1.0, -1.5]])
    p_r = torch.softmax(sim / 0.05, -1)
    p_lsr = torch.softmax(lm / 0.5, -1)
    expected = (p_r * (p_r.log() - p_lsr.log())).sum(-1).mean()
    assert torch.allclose(lsr_kl(sim, lm, tau=0.5, temperature=0.05), expected, atol=1e-5)
    # KL(p_R || p_LSR), not the reverse: the two differ on these numbers
    reverse = (p_lsr * (p_lsr.log() - p_r.log())).sum(-1).mean()
    assert not torch.allclose(expected, reverse, atol=1e-3)
    # zero when the distributions agree
    assert lsr_kl(lm * 0.1, lm, tau=0.5, temperature=0.05).abs() < 1e-5


def test_lsr_loss_is_finite_at_tau_001_and_trains_only_the_query():
    """tau = 0.01 turns a 30-nat gap into exp(-3000): probabilities underflow, log-probabilities do not."""

    class Query(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vec = torch.nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))

        def forward(self, features):
            return {"sentence_embedding": self.vec}

    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    model = Query()
    loss_fn = LSRLoss(model, docs, tau=0.01, temperature=0.05)
    # row 0: the LM prefers doc 1 while the retriever prefers doc 0 -> large loss; row 1 agrees -> small
    labels = torch.tensor([[[0.0, 1.0, 2.0], [-40.0, -10.0, -35.0]], [[0.0, 1.0, 2.0], [-40.0, -10.0, -35.0]]])
    loss = loss_fn([{}], labels)
    assert torch.isfinite(loss) and loss > 1.0
    loss.backward()
    assert model.vec.grad is not None and model.vec.grad.abs().sum() > 0
    assert not loss_fn.doc_vectors.requires_grad  # the document tower is frozen
    # one gradient step moves the query towards the LM's favourite (doc 1)
    with torch.no_grad():
        before = model.vec[0] @ docs[1]
        model.vec -= 0.01 * model.vec.grad
        assert model.vec[0] @ docs[1] > before


def test_frozen_index_nce_scores_each_positive_against_the_non_gold_rows_only():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0], [0.0, 3.0, 1.0, 1.0, 0.0]])
    # row 0: positives 0 and 1, row 2 masked (a likely unlabelled positive); row 1: positive 3, nothing masked
    labels = torch.tensor([[[0.0, 1.0], [2.0, -1.0]], [[3.0, -1.0], [-1.0, -1.0]]])
    terms = [-torch.log_softmax(logits[0, [0, 3, 4]], 0)[0], -torch.log_softmax(logits[0, [1, 3, 4]], 0)[0],
             -torch.log_softmax(logits[1, [3, 0, 1, 2, 4]], 0)[0]]
    assert torch.allclose(frozen_index_nce(logits, labels), torch.stack(terms).mean())


# ---------------------------------------------------------------------------------------------------------------------
# Data


def test_load_questions_reads_raft_and_pairs_and_names_bad_lines(tmp_path):
    raft = {
        "id": "q1", "group_id": "g", "question": "Who?", "answer": "Ann", "oracle_ids": ["d1"], "oracle_kept": True,
        "documents": [{"doc_id": "d1", "text": "Ann did.", "is_oracle": True}, {"doc_id": "d2", "text": "Bob."}],
        "split": "train",
    }
    pair = {"id": "q2", "question": "What?", "positive_id": "c1", "positive": "It.", "negative_ids": ["c2"],
            "negatives": ["No."], "split": "eval"}
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"group_id": "g", "examples": [raft]}) + "\n" + json.dumps(pair) + "\n")
    train = load_questions(path, split="train")
    assert [(q.question, q.answer, q.positive_ids, q.negative_ids) for q in train] == [("Who?", "Ann", ["d1"], ["d2"])]
    assert [q.answer for q in load_questions(path, split="eval")] == [None]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pair) + "\n" + json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(RetrieverDataError, match=r"bad.jsonl:2: neither a RAFT example"):
        load_questions(bad, split="all")
    with pytest.raises(RetrieverDataError, match="does not exist"):
        load_questions(tmp_path / "missing.jsonl")


def test_lsr_scores_the_answer_for_raft_and_the_question_for_pairs():
    from ragtune.train.retriever.lsr import lm_request

    messages, target = lm_request("Who founded it?", "Ann Lee", "Acme", "It was founded by Ann Lee.")
    assert target == "Ann Lee" and messages[0]["content"].startswith("Background: Acme\nIt was founded")
    assert "Who founded it?" in messages[0]["content"]
    messages, target = lm_request("Who founded it?", None, "Acme", "Acme was founded by Ann Lee.")
    assert target == "Who founded it?" and "Who founded it?" not in messages[0]["content"]  # UPR: p(question | chunk)


# ---------------------------------------------------------------------------------------------------------------------
# Training on a real index


@pytest.fixture(scope="module")
def tiny_ws(tmp_path_factory, embedder):
    """8 bundled HotpotQA questions: their ~80 paragraphs indexed, and RAFT records of all 8 (no teacher)."""
    from ragtune.index.ingest import ingest
    from ragtune.synth.from_qa import FromQAConfig, synthesize_from_qa

    root = tmp_path_factory.mktemp("retriever")
    data = root / "hotpot8.json"
    data.write_text(json.dumps(json.loads(HOTPOT_MINI.read_text(encoding="utf-8"))[:8]), encoding="utf-8")
    ws = root / "ws"
    ingest([data], ws, embedder=embedder)
    synthesize_from_qa("hotpotqa", data, ws, FromQAConfig(split="all", distractor_source="own"))
    return ws


def _vectors(ws) -> dict[str, np.ndarray]:
    table = ChunkStore(ws).scan(["chunk_id", "vector"])
    return dict(zip(table["chunk_id"].to_pylist(), np.asarray(table["vector"].to_pylist()), strict=True))


def test_lsr_trains_a_query_tower_and_leaves_the_index_alone(tiny_ws, tmp_path):
    from ragtune.train.retriever.lsr import LSRConfig, train_lsr

    raft = tiny_ws / "synth" / "raft.jsonl"
    vectors_before = _vectors(tiny_ws)
    version = ChunkStore(tiny_ws).version
    out = tmp_path / "lsr"
    config = LSRConfig(top_k=3, limit=4, batch_size=2, epochs=2, lr=1e-4)
    result = train_lsr(tiny_ws, raft, config, out=out)
    assert result.counts["trained_questions"] == 4 and result.counts["lm_scored"] == 12
    assert result.steps == 4 and all(np.isfinite(result.losses))

    spec = load_spec(out)
    assert spec.kind == "query-tower" and spec.document_encoder == IndexSettings.load(Workspace(tiny_ws)).embedder
    assert ChunkStore(tiny_ws).version == version  # not rebuilt, not touched
    after = _vectors(tiny_ws)
    assert all(np.array_equal(vectors_before[c], after[c]) for c in vectors_before)

    base = Searcher(tiny_ws)
    tuned = Searcher(tiny_ws, SearchConfig(retriever=str(out)))
    question = "Which magazine was started first, Arthur's Magazine or First for Women?"
    q_base, q_tuned = base.query_embedder.encode_query(question), tuned.query_embedder.encode_query(question)
    assert not np.allclose(q_base, q_tuned, atol=1e-4)  # the query tower moved
    assert len(tuned.search(question, k=3, mode="dense")) == 3

    # LM scores are cached on disk: a second run with other training settings scores nothing again
    cache_files = list((tiny_ws / "train" / "lsr-cache").glob("*.jsonl"))
    assert len(cache_files) == 1 and len(cache_files[0].read_text().splitlines()) == 12
    again = train_lsr(tiny_ws, raft, config.model_copy(update={"epochs": 1}), out=tmp_path / "lsr2")
    assert again.counts["lm_scored"] == 0 and again.counts["lm_cached"] == 12


def test_query_tower_refuses_an_index_of_another_embedder(tiny_ws, tmp_path):
    from ragtune.index.retriever import RetrieverSpec

    folder = tmp_path / "foreign"
    (folder / "query_encoder").mkdir(parents=True)
    RetrieverSpec(kind="query-tower", method="lsr", query_encoder="query_encoder",
                  document_encoder="BAAI/bge-small-en-v1.5").save(folder)
    with pytest.raises(RetrieverError, match="trained against documents embedded by 'BAAI/bge-small-en-v1.5'"):
        Searcher(tiny_ws, SearchConfig(retriever=str(folder)))
    with pytest.raises(RetrieverError, match="no retriever.json"):
        Searcher(tiny_ws, SearchConfig(retriever=str(tmp_path)))


def test_reembed_resumes_after_the_last_committed_chunk(tiny_ws, tmp_path, embedder):
    import shutil

    from ragtune.index.reembed import reembed_index, state_path

    ws = tmp_path / "copy"
    shutil.copytree(tiny_ws, ws)
    ids = sorted(_vectors(ws))
    half = ids[len(ids) // 2]
    state_path(Workspace(ws)).write_text(json.dumps({"embedder": embedder.resolved.reference, "done_through": half}))
    done = reembed_index(ws, embedder, commit_every=16)
    assert done == len([i for i in ids if i > half])  # only the rest
    assert not state_path(Workspace(ws)).exists()
    assert ChunkStore(ws).count() == len(ids)


def test_contrastive_trains_both_towers_and_reembeds_the_index(tiny_ws, tmp_path):
    import shutil

    from ragtune.train.retriever.contrastive import ContrastiveConfig, train_contrastive

    ws = tmp_path / "ws"
    shutil.copytree(tiny_ws, ws)
    before = _vectors(ws)
    out = tmp_path / "contrastive"
    result = train_contrastive(ws, ws / "synth" / "raft.jsonl",
                               ContrastiveConfig(tower="both", limit=6, negatives=1, batch_size=4), out=out)
    assert result.steps >= 2 and all(np.isfinite(result.losses))
    assert result.counts["reembedded"] == len(before)
    after = _vectors(ws)
    assert set(after) == set(before)  # same chunks, none lost or doubled
    assert all(not np.allclose(before[c], after[c], atol=1e-5) for c in before)  # every vector is the new model's
    spec = load_spec(out)
    assert IndexSettings.load(Workspace(ws)).embedder == spec.document_encoder == str((out / "model").resolve())
    assert result.after and result.before  # held-out (eval-split) questions were scored both ways
    hits = Searcher(ws, SearchConfig(retriever=str(out))).search("Arthur's Magazine", k=3, mode="dense")
    assert len(hits) == 3
    # the trained folder does not fit the original index (embedded by the base model)
    with pytest.raises(RetrieverError, match="re-embed the index"):
        Searcher(tiny_ws, SearchConfig(retriever=str(out)))


def test_contrastive_query_tower_trains_against_the_frozen_index(tiny_ws, tmp_path):
    from ragtune.train.retriever.contrastive import ContrastiveConfig, train_contrastive

    before = _vectors(tiny_ws)
    version = ChunkStore(tiny_ws).version
    out = tmp_path / "contrastive-query"
    result = train_contrastive(tiny_ws, tiny_ws / "synth" / "raft.jsonl",
                               ContrastiveConfig(limit=6, batch_size=4, epochs=1), out=out)
    assert result.extra["tower"] == "query" and result.steps == 2 and all(np.isfinite(result.losses))
    assert result.counts["positive_pairs"] >= 6  # every gold chunk of a question is a positive
    spec = load_spec(out)
    assert spec.kind == "query-tower" and spec.method == "contrastive"
    assert ChunkStore(tiny_ws).version == version and "reembedded" not in result.counts  # the index is untouched
    after = _vectors(tiny_ws)
    assert all(np.array_equal(before[c], after[c]) for c in before)
    question = "Which magazine was started first, Arthur's Magazine or First for Women?"
    tuned = Searcher(tiny_ws, SearchConfig(retriever=str(out)))
    assert not np.allclose(Searcher(tiny_ws).query_embedder.encode_query(question),
                           tuned.query_embedder.encode_query(question), atol=1e-4)
    assert len(tuned.search(question, k=3, mode="dense")) == 3


def test_mined_negatives_exclude_gold_documents(tiny_ws):
    from ragtune.train.retriever.data import IndexChunks, mine_negatives

    searcher = Searcher(tiny_ws)
    chunks = IndexChunks(searcher)
    resolved = [r for r in map(chunks.resolve, load_questions(tiny_ws / "synth" / "raft.jsonl", "all")) if r]
    assert len(resolved) == 8
    vectors = searcher.embedder.encode([r.question.question for r in resolved])
    mine_negatives(chunks, resolved, vectors, n=3)
    for r in resolved:
        assert len(r.negatives) == 3
        assert not {chunks.doc_ids[chunks.row[c]] for c in r.negatives} & r.gold_docs


def test_reranker_trains_and_reorders_search_hits(tiny_ws, tmp_path):
    from ragtune.train.retriever.reranker import RerankerConfig, train_reranker

    out = tmp_path / "reranker"
    result = train_reranker(tiny_ws, tiny_ws / "synth" / "raft.jsonl", RerankerConfig(limit=4, negatives=1,
                                                                                         batch_size=4), out=out)
    assert result.counts["positive_rows"] >= 4 and result.steps >= 2
    assert (out / "config.json").exists()
    searcher = Searcher(tiny_ws, SearchConfig(reranker=str(out), rerank_candidates=8))
    hits = searcher.search("Which magazine was started first, Arthur's Magazine or First for Women?", k=4,
                           mode="dense")
    assert len(hits) == 4 and [h.rank for h in hits] == [1, 2, 3, 4]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    plain = [h.chunk_id for h in Searcher(tiny_ws).search("Which magazine was started first, Arthur's Magazine or "
                                                          "First for Women?", k=8, mode="dense")]
    assert {h.chunk_id for h in hits} <= set(plain)  # reranking only reorders the first stage's candidates


def test_cli_errors_are_clear(tiny_ws, tmp_path):
    from ragtune.cli import app

    runner = CliRunner()
    raft = str(tiny_ws / "synth" / "raft.jsonl")
    r = runner.invoke(app, ["train", "retriever", "-w", str(tiny_ws), "--method", "dpr", "--data", raft])
    assert r.exit_code == 2 and "unknown --method 'dpr'" in r.output
    r = runner.invoke(app, ["train", "retriever", "-w", str(tiny_ws), "--data", str(tmp_path / "none.jsonl")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["train", "retriever", "-w", str(tiny_ws), "--data", raft, "--tau", "0"])
    assert r.exit_code == 2 and "tau" in r.output
    r = runner.invoke(app, ["search", "magazine", "-w", str(tiny_ws), "--retriever", str(tmp_path)])
    assert r.exit_code == 2 and "no retriever.json" in r.output
    r = runner.invoke(app, ["train", "retriever", "--help"])
    assert r.exit_code == 0 and "KL(p_R || p_LSR)" in r.output


def test_plain_ingest_keeps_the_embedder_a_reembedded_index_records(tiny_ws, tmp_path):
    """After a contrastive run re-embeds the index with its model, `ragtune ingest` without --embedder embeds new
    documents with that model (the index's recorded one), not the bundled default (which the index would refuse)."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from ragtune.cli import app
    from ragtune.index.embedding import Embedder
    from ragtune.index.reembed import reembed_index
    from ragtune.models import resolve_embedder

    ws = tmp_path / "ws"
    shutil.copytree(tiny_ws, ws)
    tuned = tmp_path / "tuned"  # stands for a contrastive run's model: another folder, another embedder reference
    SentenceTransformer(str(resolve_embedder("all-minilm-l6-v2").path)).save(str(tuned))
    reembed_index(ws, Embedder(str(tuned)))
    recorded = IndexSettings.load(Workspace(ws)).embedder
    assert recorded == str(tuned.resolve())
    before = ChunkStore(ws).count()
    doc = tmp_path / "new.txt"
    doc.write_text("The Zeppelin museum in Friedrichshafen opened in 1996 and shows airships.", encoding="utf-8")
    r = CliRunner().invoke(app, ["ingest", str(doc), "-w", str(ws)])
    assert r.exit_code == 0, r.output
    assert ChunkStore(ws).count() == before + 1
    assert IndexSettings.load(Workspace(ws)).embedder == recorded
    # an explicit other embedder is still refused, with the message that says what to do
    r = CliRunner().invoke(app, ["ingest", str(doc), "-w", str(ws), "--embedder", "all-minilm-l6-v2"])
    assert r.exit_code != 0 and "--rebuild" in r.output
