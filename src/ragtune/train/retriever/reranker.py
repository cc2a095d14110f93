"""Train a cross-encoder reranker on the same questions: (question, chunk) -> how relevant.

Initialised from the bundled MiniLM weights (no reranker ships in a package; the classification head starts fresh)
or from any hub id / folder, and trained with sentence-transformers' CrossEncoderTrainer. Two losses:
- `listwise` (default): each row is (question, gold chunk, hard negatives from the first stage's own top
  `depth` hits); the loss is a softmax cross-entropy over the row's chunks plus one in-batch negative
  (sentence-transformers' cross-encoder MultipleNegativesRankingLoss). The reranker sees at search time exactly
  this kind of list: the first stage's top candidates, golds among near misses. Each step compares a gold chunk
  with its competitors directly, which a fresh head learns from far fewer steps than from independent labels.
- `bce`: pointwise BinaryCrossEntropyLoss on positives (1) and hard + random negatives (0), classes weighted. The
  earlier recipe; measured on 216 held-out HotpotQA questions (100 training questions, 51 steps): the loss barely
  moved (1.05 -> 0.98) and reranking the dense top-10 fell from recall@5 0.683 to 0.470.
- `distill`: each row is (question, [gold chunks + first-stage hard negatives]) with a soft target distribution:
  uniform over the gold chunks, mixed (`lsr_weight`) with p_LSR = softmax(log p_LM(answer | chunk) / tau) of an LM
  (the RAFT-tuned generator, `lsr_adapter`, where one is given); ListNet cross-entropy (sentence-transformers'
  ListNetLoss) pulls the cross-encoder's softmax over the row towards it. The LM's scores are the LSR trainer's,
  cached on disk, so a reranker after an LSR run pays no LM time for the chunks both saw.
Negatives come from the first stage the reranker will rerank (`first_stage`, hybrid by default: the search default).
With hard negatives only and BCE, which are by construction closer to the question than many gold chunks (a multi-hop
question's second paragraph), a small training set teaches the head "similar means irrelevant" (measured: recall@5
0.79 -> 0.11 on 60 HotpotQA questions); random chunks anchor the easy end of the scale there. The saved folder is a
plain CrossEncoder: `ragtune search --rerank FOLDER` uses it; `rerank_gate.calibrate_gate` decides when to use it.
Where a network exists, a hub cross-encoder trained on MS MARCO (`--base cross-encoder/ms-marco-MiniLM-L6-v2`, or
`search --rerank` with that id directly) is the better start: a fresh head trained on a few hundred questions
cannot match millions of labelled pairs.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from ragtune.index.rerank import SPEC_FILE
from ragtune.models import resolve_embedder
from ragtune.retrieve.search import Searcher
from ragtune.train.retriever.common import TrainResult, peak_rss_mb, run_trainer
from ragtune.train.retriever.data import IndexChunks, Resolved, RetrieverDataError, mine_negatives
from ragtune.train.retriever.lsr import (
    ScoreCache,
    cache_path,
    lm_identity,
    load_scorer,
    prepare,
    score_candidates,
    write_manifest,
)
from ragtune.workspace import Workspace


class RerankerConfig(BaseModel):
    """Settings of one reranker run."""

    base: str | None = None  # default: the bundled MiniLM weights
    loss: Literal["listwise", "bce", "distill"] = "listwise"
    first_stage: Literal["dense", "hybrid"] = "hybrid"  # where hard negatives come from: what the reranker reranks
    negatives: Annotated[int, Field(ge=0)] = 3  # mined hard negatives per question
    random_negatives: Annotated[int, Field(ge=0)] = 3  # bce: random chunks per question
    in_batch_negatives: Annotated[int, Field(ge=1)] = 1  # listwise: other rows' chunks per row
    depth: Annotated[int, Field(ge=1)] = 20  # mine in the first stage's top-N: what the reranker will read
    relative_margin: Annotated[float, Field(ge=0, lt=1)] = 0.05
    lsr_lm: str | None = None  # distill: the LM whose p_LSR joins the target (default: the bundled SmolLM2)
    lsr_adapter: str | None = None  # distill: its LoRA adapter (the RAFT-tuned generator)
    lsr_weight: Annotated[float, Field(ge=0, le=1)] = 0.0  # distill: target = (1 - w) gold + w p_LSR
    tau: Annotated[float, Field(gt=0)] = 0.01  # distill: p_LSR's temperature (RA-DIT's)
    epochs: Annotated[float, Field(gt=0)] = 1.0
    max_steps: Annotated[int | None, Field(ge=1)] = None  # fixed optimiser steps (overrides epochs)
    lr: Annotated[float, Field(gt=0)] = 5e-5
    batch_size: Annotated[int, Field(ge=1)] = 16
    max_length: Annotated[int, Field(ge=16)] = 256
    limit: Annotated[int | None, Field(ge=1)] = None
    seed: int = 0


def train_reranker(
    workspace: Workspace | str | Path,
    data: str | Path,
    config: RerankerConfig | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    llm: Any = None,
) -> TrainResult:
    """Train a cross-encoder and save it to `out` (default WORKSPACE/train/reranker). `llm`: an already loaded
    scorer for distill's p_LSR (else `lsr_lm` + `lsr_adapter` are loaded when `lsr_weight` > 0)."""
    from ragtune.models import quiet_transformers

    quiet_transformers()
    config = config or RerankerConfig()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    out = Path(out) if out else ws.train_dir("reranker")
    started = time.perf_counter()
    searcher = Searcher(ws)
    chunks, resolved, counts = prepare(ws, data, searcher, config.limit)
    query_vectors = searcher.embedder.encode([r.question.question for r in resolved])
    counts.update(mine_negatives(chunks, resolved, query_vectors, config.negatives, config.depth,
                                 config.relative_margin, mode=config.first_stage))
    extra: dict[str, Any] = {"loss": config.loss, "first_stage": config.first_stage}
    if config.loss == "listwise":
        rows, loss_of, sampler = _listwise_rows(chunks, resolved, config, counts)
    elif config.loss == "distill":
        rows, loss_of, sampler = _distill_rows(ws, chunks, resolved, config, counts, llm, progress, extra)
    else:
        rows, loss_of, sampler = _bce_rows(chunks, resolved, config, counts)
    prepare_seconds = time.perf_counter() - started
    steps, losses, seconds = _fit(rows, loss_of, sampler, config, out, progress, extra)
    result = TrainResult(out=out, method="reranker", examples=len(rows["query"]), steps=steps,
                         train_seconds=seconds, prepare_seconds=prepare_seconds, peak_rss_mb=peak_rss_mb(),
                         losses=losses, counts=counts, extra=extra)
    write_manifest(ws, "train-reranker", data, config.model_dump(), result)
    return result


def _fit(rows: dict[str, list], loss_of: Any, sampler: Any, config: RerankerConfig, out: Path, progress: bool,
         extra: dict[str, Any]) -> tuple[int, list[float], float]:
    """Train a CrossEncoder (fresh head on `base`) on `rows` with `loss_of(model)`, save it and its spec file."""
    import torch
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments

    base = config.base or "all-minilm-l6-v2"
    torch.manual_seed(config.seed)
    # a bundled name or folder; a hub id passes through unchanged
    model = CrossEncoder(resolve_embedder(base).path, num_labels=1, max_length=config.max_length)
    dataset = Dataset.from_dict(rows)
    if sampler is None:
        dataset = dataset.shuffle(seed=config.seed)
    more = {"batch_sampler": sampler} if sampler is not None else {}
    steps, losses, seconds = run_trainer(CrossEncoderTrainer, CrossEncoderTrainingArguments, model, dataset,
                                         loss_of(model), config, f"reranker training ({config.loss})", progress,
                                         **more)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    spec = {"kind": "cross-encoder", "base": base, "rows": len(dataset), **extra}
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return steps, losses, seconds


def _bce_rows(chunks: IndexChunks, resolved: list[Resolved], config: RerankerConfig, counts: dict[str, int]
              ) -> tuple[dict[str, list], Any, Any]:
    """loss="bce": (question, chunk, 0/1) rows, hard + random negatives, classes weighted."""
    import torch
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    rng = random.Random(config.seed)
    for r in resolved:
        picked: list[str] = []
        for _ in range(20 * config.random_negatives):
            if len(picked) >= config.random_negatives:
                break
            cid = chunks.ids[rng.randrange(len(chunks.ids))]
            if cid not in r.negatives and cid not in picked and not chunks.is_false_negative(r, cid):
                picked.append(cid)
        r.negatives = r.negatives + picked
    rows: dict[str, list] = {"query": [], "passage": [], "label": []}
    for r in resolved:
        for cid, label in [(p, 1.0) for p in r.positives] + [(n, 0.0) for n in r.negatives]:
            rows["query"].append(r.question.question)
            rows["passage"].append(chunks.doc_text(cid))
            rows["label"].append(label)
    positives = int(sum(rows["label"]))
    if positives == 0 or positives == len(rows["label"]):
        raise RetrieverDataError("a reranker needs both relevant and non-relevant chunks; no negatives were found")
    counts.update(rows=len(rows["label"]), positive_rows=positives)
    pos_weight = torch.tensor((len(rows["label"]) - positives) / positives)
    return rows, lambda model: BinaryCrossEntropyLoss(model, pos_weight=pos_weight), None


def _listwise_rows(chunks: IndexChunks, resolved: list[Resolved], config: RerankerConfig, counts: dict[str, int]
                   ) -> tuple[dict[str, list], Any, Any]:
    """loss="listwise": (question, gold chunk, first-stage hard negatives) rows, softmax cross-entropy per row."""
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    rows: dict[str, list] = {"query": [], "positive": []}
    for j in range(config.negatives):
        rows[f"negative_{j + 1}"] = []
    for r in resolved:
        if len(r.negatives) < config.negatives:
            continue
        for positive in r.positives:
            rows["query"].append(r.question.question)
            rows["positive"].append(chunks.doc_text(positive))
            for j, cid in enumerate(r.negatives[: config.negatives]):
                rows[f"negative_{j + 1}"].append(chunks.doc_text(cid))
    if len(rows["query"]) < 2:
        raise RetrieverDataError("fewer than 2 usable training rows: a listwise reranker needs negatives")
    counts.update(rows=len(rows["query"]), positive_rows=len(rows["query"]))  # one gold chunk per row
    return (rows, lambda model: MultipleNegativesRankingLoss(model, num_negatives=config.in_batch_negatives),
            BatchSamplers.NO_DUPLICATES)


def distill_targets(n_gold: int, lm_scores: list[float], lsr_weight: float = 0.0, tau: float = 0.01) -> list[float]:
    """The soft target over [gold chunks..., negatives...] (one LM score each): uniform on the gold, mixed with
    p_LSR; as log-probs (ListNetLoss softmaxes its labels, and softmax(log p) = p), floored so none is -inf."""
    target = np.zeros(len(lm_scores), dtype=np.float64)
    target[:n_gold] = 1.0 / n_gold
    if lsr_weight > 0:
        z = np.asarray(lm_scores, dtype=np.float64) / tau
        p_lsr = np.exp(z - z.max())
        target = (1.0 - lsr_weight) * target + lsr_weight * p_lsr / p_lsr.sum()
    return np.log(np.maximum(target, 1e-12)).tolist()


def _distill_rows(ws: Workspace, chunks: IndexChunks, resolved: list[Resolved], config: RerankerConfig,
                  counts: dict[str, int], llm: Any, progress: bool, extra: dict[str, Any]
                  ) -> tuple[dict[str, list], Any, Any]:
    """loss="distill": (question, [gold + negatives], soft target) rows for ListNetLoss."""
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    kept = [r for r in resolved if r.negatives]
    if len(kept) < 2:
        raise RetrieverDataError("fewer than 2 questions with first-stage negatives: a reranker needs them")
    candidates = [r.positives + r.negatives for r in kept]
    scores: list[list[float]] | None = None
    if config.lsr_weight > 0:
        llm = llm if llm is not None else load_scorer(config.lsr_lm, config.lsr_adapter)
        cache = ScoreCache(cache_path(ws, lm_identity(llm)))
        scores, lm_counts = score_candidates(kept, candidates, chunks, llm, cache, progress=progress)
        counts.update(lm_counts)
        extra["lm"] = lm_identity(llm)
    rows: dict[str, list] = {"query": [], "docs": [], "labels": []}
    for i, (r, cands) in enumerate(zip(kept, candidates, strict=True)):
        rows["query"].append(r.question.question)
        rows["docs"].append([chunks.doc_text(c) for c in cands])
        rows["labels"].append(distill_targets(len(r.positives), scores[i] if scores else [0.0] * len(cands),
                                              config.lsr_weight, config.tau))
    counts.update(rows=len(kept), positive_rows=sum(len(r.positives) for r in kept))
    return rows, lambda model: ListNetLoss(model), None
