"""GPL (Generative Pseudo Labeling, Wang et al. 2022): a cross-encoder teaches the bi-encoder with soft margins.

For each training question and gold chunk: hard negatives are mined from the workspace index with the base dense
retriever (the chunks of a gold document, and chunks holding a distinctive answer, never count), a cross-encoder
scores (question, positive) and (question, negative), and both towers learn MarginMSE towards the cross-encoder's
margins: label_i = CE(q, pos) - CE(q, neg_i), on raw scores (logits), one margin per negative
(sentence-transformers' MarginMSELoss). The index is re-embedded afterwards, as for `contrastive --tower both`.

Why soft margins: a mined "negative" on an unlabelled domain is often relevant after all (the same fact in another
document). A hard-label loss (MultipleNegativesRankingLoss) pushes it away as hard as any other; with MarginMSE a
negative the cross-encoder scores close to (or above) the positive gets a small (or negative) margin, so the student
is taught to rank it close to the positive, not to forget it. GPL therefore mines without a score filter (unlike
`mine_negatives`' relative margin): the teacher decides how negative a negative is. The share of negatives the
cross-encoder scores above the positive (the would-be false negatives) is recorded with the label statistics.

MiniLM's embeddings are normalised (a cosine margin lies in [-2, 2]) while logit margins do not, so the student's
similarity is `scale` x cosine; by default `scale` = std(CE margins) / std(base bi-encoder margins) over the
training rows, i.e. the teacher's and the untrained student's margins start on one scale and the loss measures
disagreement in ranking, not units (GPL's own students are unnormalised dot-product models).

Every training row with its scores is written to OUT/gpl_rows.jsonl (inspectable, and what the tests recompute).
"""

from __future__ import annotations

import functools
import json
import random
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field

from ragtune.retrieve.search import Searcher
from ragtune.synth.filters import open_private
from ragtune.train.retriever.common import TrainResult, peak_rss_mb, retrieval_scores
from ragtune.train.retriever.contrastive import finish_both_towers, fit_both_towers, held_out_questions
from ragtune.train.retriever.data import IndexChunks, Resolved, RetrieverDataError
from ragtune.train.retriever.lsr import prepare
from ragtune.train.retriever.progress import bar
from ragtune.workspace import Workspace

ROWS_FILE = "gpl_rows.jsonl"


class CrossEncoderLoadError(ValueError):
    """The cross-encoder named in the config cannot be loaded (no such folder, or a hub id that is not cached)."""


class GPLConfig(BaseModel):
    """Settings of one GPL run."""

    cross_encoder: str  # a folder from `ragtune train reranker`, or a hub id / folder any CrossEncoder loads
    negatives: Annotated[int, Field(ge=1)] = 3  # mined negatives per row, one margin label each
    depth: Annotated[int, Field(ge=1)] = 30  # negatives are sampled from the base retriever's top `depth`
    epochs: Annotated[float, Field(gt=0)] = 1.0
    max_steps: Annotated[int | None, Field(ge=1)] = None  # fixed optimiser steps (overrides epochs)
    lr: Annotated[float, Field(gt=0)] = 2e-5
    batch_size: Annotated[int, Field(ge=1)] = 32
    scale: Annotated[float | None, Field(gt=0)] = None  # student similarity = scale x cosine; None: fitted (above)
    ce_batch_size: Annotated[int, Field(ge=1)] = 32
    max_seq_length: Annotated[int | None, Field(ge=8)] = 128  # training truncation (the index embeds whole chunks)
    limit: Annotated[int | None, Field(ge=1)] = None
    reembed: bool = True
    seed: int = 0


def load_teacher(ref: str) -> Any:
    """The cross-encoder, loaded the way `search --rerank` loads it; a clear error naming `ref` when it cannot be."""
    from ragtune.index.rerank import load_cross_encoder

    try:
        return load_cross_encoder(ref)
    except Exception as exc:  # OSError, ValueError, RuntimeError, and assorted types for a folder without weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CrossEncoderLoadError(
            f"{ref!r} cannot be loaded as a cross-encoder ({first}); pass a folder written by `ragtune train "
            "reranker` or a hub id (offline: one already in the local cache)") from exc


def teacher_scores(teacher: Any, pairs: list[tuple[str, str]], batch_size: int = 32, progress: bool = False
                   ) -> np.ndarray:
    """The cross-encoder's raw scores (logits, no sigmoid) for (query, passage) pairs."""
    import torch

    out = np.zeros(len(pairs), dtype=np.float64)
    with bar("cross-encoder labelling", progress) as b:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            out[start:start + len(batch)] = teacher.predict(batch, batch_size=batch_size, show_progress_bar=False,
                                                            activation_fn=torch.nn.Identity(), convert_to_numpy=True)
            b.update(start + len(batch), len(pairs))
    return out


def mine_gpl_negatives(chunks: IndexChunks, resolved: list[Resolved], query_vectors: np.ndarray, n: int,
                       depth: int = 30, seed: int = 0) -> dict[str, int]:
    """Per question: n negatives sampled (seeded, as GPL samples from its retrievers' top hits) from the base
    retriever's top `depth` that are not false negatives by construction (a gold document's chunks, chunks holding a
    distinctive answer). No score filter: the cross-encoder's margins handle the near misses. Returns counts."""
    rng = random.Random(seed)
    counts = {"dropped_false_negatives": 0, "short_of_negatives": 0}
    for r, qvec in zip(resolved, query_vectors, strict=True):
        candidates = []
        for cid, _ in chunks.searcher.dense_by_vector(qvec, depth):
            if chunks.is_false_negative(r, cid):
                counts["dropped_false_negatives"] += 1
            else:
                candidates.append(cid)
        if len(candidates) < n:
            counts["short_of_negatives"] += 1
        r.negatives = rng.sample(candidates, n) if len(candidates) >= n else candidates
    return counts


def scaled_dot(a: Any, b: Any, scale: float = 1.0) -> Any:
    """scale x the row-wise dot product (cosine, for a normalising model): the student's similarity in MarginMSE."""
    from sentence_transformers.util import pairwise_dot_score

    return scale * pairwise_dot_score(a, b)


def label_stats(margins: np.ndarray, ce_pos: np.ndarray, ce_neg: np.ndarray) -> dict[str, float]:
    """Mean / std of the margin labels, and the share of negatives the cross-encoder scores above the positive."""
    return {
        "margin_mean": float(margins.mean()),
        "margin_std": float(margins.std()),
        "margin_min": float(margins.min()),
        "margin_max": float(margins.max()),
        "ce_positive_mean": float(ce_pos.mean()),
        "ce_negative_mean": float(ce_neg.mean()),
        "negatives_above_positive": float((margins < 0).mean()),
    }


def train_gpl(
    workspace: Workspace | str | Path,
    data: str | Path,
    config: GPLConfig,
    out: str | Path | None = None,
    eval_data: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Pseudo-label (question, gold chunk, mined negatives) with the cross-encoder, train both towers with MarginMSE
    on its margins, save to `out` (default WORKSPACE/train/retriever-gpl) and re-embed the index with the model."""
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    out = Path(out) if out else ws.train_dir("retriever-gpl")
    teacher = load_teacher(config.cross_encoder)  # first: a wrong --cross-encoder fails before any work
    started = time.perf_counter()
    searcher = Searcher(ws)
    chunks, resolved, counts = prepare(ws, data, searcher, config.limit)
    base = searcher.settings.embedder
    query_vectors = searcher.embedder.encode([r.question.question for r in resolved])
    counts.update(mine_gpl_negatives(chunks, resolved, query_vectors, config.negatives, config.depth, config.seed))

    kept: list[tuple[int, str]] = [(i, p) for i, r in enumerate(resolved) if len(r.negatives) == config.negatives
                                   for p in r.positives]
    if len(kept) < 2:
        raise RetrieverDataError(f"fewer than 2 questions kept {config.negatives} mined negatives: lower --negatives")
    k = config.negatives
    pairs = [(resolved[i].question.question, chunks.doc_text(cid))
             for i, pos in kept for cid in [pos, *resolved[i].negatives]]
    scores = teacher_scores(teacher, pairs, config.ce_batch_size, progress).reshape(len(kept), k + 1)
    ce_pos, ce_neg = scores[:, 0], scores[:, 1:]
    margins = ce_pos[:, None] - ce_neg  # (rows, negatives): MarginMSE's labels

    # the untrained student's margins, from the index's own vectors (the base model's document embeddings)
    qv = np.asarray(query_vectors, dtype=np.float64)
    student = np.array([[qv[i] @ v for v in searcher.vectors([pos, *resolved[i].negatives]).astype(np.float64)]
                        for i, pos in kept])
    base_margins = student[:, :1] - student[:, 1:]
    scale = config.scale or (float(margins.std() / base_margins.std()) if base_margins.std() > 1e-9 else 1.0)

    rows: dict[str, list[Any]] = {"anchor": [], "positive": [], **{f"negative_{j + 1}": [] for j in range(k)},
                                  "label": []}
    out.mkdir(parents=True, exist_ok=True)
    (out / ROWS_FILE).unlink(missing_ok=True)
    open_private(out / ROWS_FILE)  # users' questions and chunks: readable by the owner only
    with (out / ROWS_FILE).open("w", encoding="utf-8") as f:
        for row, (i, pos) in enumerate(kept):
            r = resolved[i]
            rows["anchor"].append(r.question.question)
            rows["positive"].append(chunks.doc_text(pos))
            for j, cid in enumerate(r.negatives):
                rows[f"negative_{j + 1}"].append(chunks.doc_text(cid))
            rows["label"].append(margins[row].tolist())
            f.write(json.dumps({"question": r.question.question, "positive_id": pos, "negative_ids": r.negatives,
                                "ce_positive": float(ce_pos[row]), "ce_negatives": ce_neg[row].tolist(),
                                "margins": margins[row].tolist()}) + "\n")
    counts.update(rows=len(kept), questions_trained=len({i for i, _ in kept}), negatives=int(margins.size),
                  negatives_above_positive=int((margins < 0).sum()))
    held_out = held_out_questions(chunks, data, eval_data)
    before = retrieval_scores(searcher, chunks, held_out) if held_out else {}
    prepare_seconds = time.perf_counter() - started

    similarity = functools.partial(scaled_dot, scale=scale)
    fit = fit_both_towers(base, rows, out, "gpl", config, progress, "gpl training (MarginMSE)",
                          loss_of=lambda model: MarginMSELoss(model, similarity_fct=similarity))
    stats = label_stats(margins, ce_pos, ce_neg)
    result = TrainResult(out=out, method="gpl", examples=len(kept), steps=fit.steps, train_seconds=fit.seconds,
                         prepare_seconds=prepare_seconds, peak_rss_mb=peak_rss_mb(), losses=fit.losses,
                         counts=counts, before=before,
                         extra={"cross_encoder": config.cross_encoder, "labels": stats, "scale": scale,
                                "base_margin_std": float(base_margins.std()), "rows_file": str(out / ROWS_FILE)})
    return finish_both_towers(ws, fit, result, chunks, held_out, config.reembed, progress, "train-retriever-gpl",
                              data, config.model_dump())
