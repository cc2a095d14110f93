"""GPL pseudo-labelling (`train retriever --method gpl`) on the shared tiny index (8 bundled HotpotQA questions).

Real models: the teacher is a cross-encoder trained here from the bundled MiniLM in two steps (no reranker ships in a
package); the student is the bundled MiniLM. One run goes through the CLI (the manifest records what `train_gpl`
returned); its labels are recomputed with an independently loaded copy of the teacher, and the saved folder is
loaded the way `ragtune search --retriever` loads it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_train_retriever import tiny_ws  # noqa: F401  (the shared tiny index fixture)
from typer.testing import CliRunner

from ragtune.config import SearchConfig
from ragtune.index.retriever import load_spec
from ragtune.retrieve.search import Searcher
from ragtune.train.retriever.data import IndexChunks, load_questions

QUESTION = "Which magazine was started first, Arthur's Magazine or First for Women?"


@pytest.fixture(scope="module")
def teacher(tiny_ws, tmp_path_factory):  # noqa: F811
    """A cross-encoder from `train_reranker`, two steps: a real teacher whose scores differ by pair."""
    from ragtune.train.retriever.reranker import RerankerConfig, train_reranker

    out = tmp_path_factory.mktemp("gpl-teacher") / "reranker"
    train_reranker(tiny_ws, tiny_ws / "synth" / "raft.jsonl",
                   RerankerConfig(limit=2, negatives=1, batch_size=2, max_steps=2, max_length=96), out=out)
    return out


@pytest.fixture(scope="module")
def gpl_run(tiny_ws, teacher, tmp_path_factory):  # noqa: F811
    """One GPL run through the CLI on a copy of the index (it is re-embedded): (workspace copy, output folder, the
    run's manifest)."""
    from ragtune.cli import app

    root = tmp_path_factory.mktemp("gpl")
    ws = root / "ws"
    shutil.copytree(tiny_ws, ws)
    out = root / "gpl"
    r = CliRunner().invoke(app, ["train", "retriever", "-w", str(ws), "--method", "gpl", "--data",
                                 str(ws / "synth" / "raft.jsonl"), "--cross-encoder", str(teacher), "--limit", "4",
                                 "--negatives", "3", "--batch-size", "2", "--steps", "2", "--max-seq-length", "64",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "trained retriever (gpl)" in r.output and "held-out questions" in r.output  # the before / after table
    manifest = json.loads((ws / "manifests" / "train-retriever-gpl.json").read_text(encoding="utf-8"))
    return ws, out, manifest


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "gpl_rows.jsonl").read_text(encoding="utf-8").splitlines()]


def test_labels_are_the_teachers_margins_recomputed_independently(tiny_ws, teacher, gpl_run):  # noqa: F811
    import torch
    from sentence_transformers import CrossEncoder

    _, out, manifest = gpl_run
    rows = _rows(out)
    assert len(rows) == manifest["counts"]["examples"] == manifest["counts"]["rows"] >= 4  # one row per gold chunk
    chunks = IndexChunks(Searcher(tiny_ws))
    fresh = CrossEncoder(str(teacher))  # not the process-wide cached instance the run used
    for row in rows[:3]:
        texts = [chunks.doc_text(c) for c in [row["positive_id"], *row["negative_ids"]]]
        logits = fresh.predict([(row["question"], t) for t in texts], activation_fn=torch.nn.Identity())
        assert np.allclose(row["margins"], logits[0] - logits[1:], atol=1e-4)
        assert np.allclose(row["margins"], row["ce_positive"] - np.asarray(row["ce_negatives"]), atol=1e-9)
    margins = np.asarray([r["margins"] for r in rows])
    assert margins.std() > 1e-3  # a trained teacher does not score every pair alike
    stats = manifest["extra"]["labels"]
    assert stats["margin_mean"] == pytest.approx(margins.mean()) and stats["margin_std"] == pytest.approx(margins.std())
    assert stats["negatives_above_positive"] == pytest.approx((margins < 0).mean())
    assert manifest["counts"]["negatives"] == margins.size == 3 * len(rows)
    assert manifest["counts"]["negatives_above_positive"] == (margins < 0).sum()


def test_negatives_are_never_the_positive_or_from_a_gold_document(tiny_ws, gpl_run):  # noqa: F811
    _, out, _ = gpl_run
    assert (out / "gpl_rows.jsonl").stat().st_mode & 0o777 == 0o600  # users' questions: the owner's only
    chunks = IndexChunks(Searcher(tiny_ws))
    gold = {r.question.question: r for r in map(chunks.resolve, load_questions(tiny_ws / "synth" / "raft.jsonl"))
            if r is not None}
    for row in _rows(out):
        r = gold[row["question"]]
        assert row["positive_id"] in r.positives
        negatives = row["negative_ids"]
        assert len(negatives) == len(set(negatives)) == 3
        assert not set(negatives) & set(r.positives)
        assert not {chunks.doc_ids[chunks.row[c]] for c in negatives} & r.gold_docs


def test_the_saved_retriever_loads_for_search_and_changes_query_vectors(tiny_ws, gpl_run):  # noqa: F811
    ws, out, manifest = gpl_run
    losses = manifest["extra"]["losses"]
    assert manifest["counts"]["steps"] == 2 and len(losses) >= 1 and all(np.isfinite(losses))
    spec = load_spec(out)
    assert spec.kind == "dual-encoder" and spec.method == "gpl"
    assert manifest["counts"]["reembedded"] == len(IndexChunks(Searcher(tiny_ws)).ids)
    tuned = Searcher(ws, SearchConfig(retriever=str(out)))
    assert not np.allclose(Searcher(tiny_ws).query_embedder.encode_query(QUESTION),
                           tuned.query_embedder.encode_query(QUESTION), atol=1e-4)
    assert len(tuned.search(QUESTION, k=3, mode="dense")) == 3
    extra = manifest["extra"]
    assert extra["cross_encoder"] == manifest["config"]["cross_encoder"] and extra["scale"] > 0
    assert manifest["timings"]["train_s"] > 0 and extra["peak_rss_mb"] > 0
    assert extra["before"] and extra["after"]  # held-out (eval-split) questions scored both ways


def test_cli_needs_a_loadable_cross_encoder(tiny_ws, tmp_path):  # noqa: F811
    from ragtune.cli import app

    runner = CliRunner()
    raft = str(tiny_ws / "synth" / "raft.jsonl")
    base = ["train", "retriever", "-w", str(tiny_ws), "--method", "gpl", "--data", raft]
    r = runner.invoke(app, base)
    assert r.exit_code == 2 and "--cross-encoder" in r.output
    missing = tmp_path / "no-such-reranker"
    r = runner.invoke(app, [*base, "--cross-encoder", str(missing)])
    assert r.exit_code == 2 and str(missing) in r.output and "--cross-encoder" in r.output
    r = runner.invoke(app, [*base, "--cross-encoder", "no-such-org/no-such-reranker"])  # a hub id, offline
    assert r.exit_code == 2 and "no-such-org/no-such-reranker" in r.output
