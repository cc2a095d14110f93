"""Domain adaptation from the corpus alone: contrastive training on inverse-cloze and cropped pairs.

No questions, no teacher: `ragtune.synth.pairs_unsupervised` turns the index's own chunks into (query, positive)
pairs (ICT: a sentence vs the rest of its chunk; cropping: two independent spans of one chunk). Hard negatives are
the base retriever's top hits for each query, filtered twice: every chunk of the source document is a false negative
by construction, and a hit whose dense score is above (1 - relative_margin) x the positive's is dropped as a likely
unlabelled positive (near-duplicate passages, the same fact stated elsewhere).

- `tower="query"` (default): InfoNCE of the query encoder against frozen document vectors: the index's chunks plus
  each pair's positive embedded by the frozen base model (the document tower does not move, so embedding the
  positive with it is exactly what the index would hold for that text). Every chunk is a negative except the masked
  ones; the index is kept as it is.
- `tower="both"`: MultipleNegativesRankingLoss over (query, positive, mined negatives), both towers trained, the index
  re-embedded afterwards (like `contrastive --tower both`).

`target="hybrid"` (query tower only) keeps the pseudo-queries and changes what they are taught: the hybrid first
stage's own ranking (BM25 and dense fused by RRF) of each query's top `teacher_k` chunks, as the distribution
p_T(c) ∝ exp(-rank(c) / teacher_tau), which the dense query tower matches with RA-DIT's KL (`LSRLoss`, the LM's
scores replaced by the ranks). Hybrid beats dense on both benchmark corpora (SciFact 0.729 vs 0.697 nDCG@10), so the
corpus itself holds a better ranker than the dense tower alone; distilling it needs no labels and no teacher model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from ragtune.index.settings import index_text
from ragtune.retrieve.search import Searcher
from ragtune.synth.pairs_unsupervised import (
    KINDS,
    CorpusChunk,
    CorpusPair,
    PairKind,
    build_corpus_pairs,
    write_corpus_pairs,
)
from ragtune.train.retriever.common import TrainResult, peak_rss_mb, retrieval_scores
from ragtune.train.retriever.contrastive import (
    fit_both_towers,
    fit_query_tower,
    held_out_questions,
    reembed_with,
    train_query_tower,
)
from ragtune.train.retriever.data import IndexChunks, RetrieverDataError
from ragtune.train.retriever.lsr import before_after, write_manifest
from ragtune.workspace import Workspace


class UnsupervisedConfig(BaseModel):
    """Settings of one corpus-only run."""

    pairs: list[PairKind] = Field(default_factory=lambda: list(KINDS))
    tower: Literal["query", "both"] = "query"
    max_pairs: Annotated[int | None, Field(ge=2)] = 2000  # one per (chunk, kind), chunks in a seeded random order
    negatives: Annotated[int, Field(ge=0)] = 3  # tower=both: mined hard negatives per row
    depth: Annotated[int, Field(ge=1)] = 30  # how deep in the base retriever's ranking negatives are mined
    relative_margin: Annotated[float, Field(ge=0, lt=1)] = 0.05
    epochs: Annotated[float, Field(gt=0)] = 1.0
    max_steps: Annotated[int | None, Field(ge=1)] = None  # fixed optimiser steps (overrides epochs)
    lr: Annotated[float | None, Field(gt=0)] = None  # None: 1e-4 (query tower) / 2e-5 (both)
    batch_size: Annotated[int, Field(ge=2)] = 32
    scale: Annotated[float, Field(gt=0)] = 20.0
    max_seq_length: Annotated[int | None, Field(ge=8)] = 128  # tower=both: training truncation
    reembed: bool = True  # tower=both only
    target: Literal["pair", "hybrid"] = "pair"  # hybrid: the hybrid first stage's ranking (query tower only)
    teacher_k: Annotated[int, Field(ge=2)] = 20  # target=hybrid: chunks of the hybrid ranking per query
    teacher_tau: Annotated[float, Field(gt=0)] = 2.0  # target=hybrid: p_T ∝ exp(-rank / tau)
    temperature: Annotated[float, Field(gt=0)] = 0.05  # target=hybrid: the dense tower's softmax temperature
    seed: int = 0


class MinedPairs:
    """Per pair: the kept hard negatives (chunk ids) and the index rows never to count as negatives."""

    def __init__(self) -> None:
        self.negatives: list[list[str]] = []
        self.masked: list[list[int]] = []
        self.counts = {"masked_same_doc": 0, "dropped_margin": 0, "short_of_negatives": 0}


def mine_pair_negatives(chunks: IndexChunks, pairs: list[CorpusPair], query_vectors: np.ndarray,
                        positive_vectors: np.ndarray, n: int, depth: int = 30,
                        relative_margin: float = 0.05) -> MinedPairs:
    """The base retriever's top `depth` hits per pair query, split into negatives (up to n) and masked rows: the
    source document's chunks (all of them, hit or not) and hits scoring above (1 - margin) x the positive."""
    searcher = chunks.searcher
    mined = MinedPairs()
    for pair, qvec, pvec in zip(pairs, query_vectors, positive_vectors, strict=True):
        pos_score = float(pvec @ qvec)
        same_doc = list(chunks.by_doc.get(pair.doc_id, []))
        mined.counts["masked_same_doc"] += len(same_doc)
        masked, kept = list(same_doc), list[str]()
        for cid, score in searcher.dense_by_vector(qvec, depth):
            row = chunks.row[cid]
            if row in same_doc:
                continue
            if score > (1.0 - relative_margin) * pos_score:
                mined.counts["dropped_margin"] += 1
                masked.append(row)
            elif len(kept) < n:
                kept.append(cid)
        if len(kept) < n:
            mined.counts["short_of_negatives"] += 1
        mined.negatives.append(kept)
        mined.masked.append(masked)
    return mined


def train_unsupervised(
    workspace: Workspace | str | Path,
    config: UnsupervisedConfig | None = None,
    out: str | Path | None = None,
    eval_data: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Adapt the retriever to the workspace's corpus with ICT / cropping pairs; saved to `out` (default
    WORKSPACE/train/retriever-unsupervised). `eval_data` (a RAFT or pairs file) scores it before and after."""
    config = config or UnsupervisedConfig()
    if config.target == "hybrid" and config.tower != "query":
        raise ValueError("target='hybrid' trains the query tower against the index: use tower='query'")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    out = Path(out) if out else ws.train_dir("retriever-unsupervised")
    started = time.perf_counter()
    searcher = Searcher(ws)
    chunks = IndexChunks(searcher)
    base = searcher.settings.embedder
    corpus = [CorpusChunk(c, d, t or "", x) for c, d, t, x in zip(chunks.ids, chunks.doc_ids, chunks.titles,
                                                                  chunks.texts, strict=True)]
    pairs = build_corpus_pairs(corpus, config.pairs, config.max_pairs, config.seed)
    if len(pairs) < 2:
        raise RetrieverDataError(f"the index of {ws.root} yields {len(pairs)} {'/'.join(config.pairs)} pair(s): "
                                 "chunks need two sentences (ict) or ten words (crop)")
    pairs_file = write_corpus_pairs(out / "pairs.jsonl", pairs)
    counts = {"pairs": len(pairs), **{f"pairs_{k}": sum(p.kind == k for p in pairs) for k in config.pairs}}
    if config.target == "pair":  # the hybrid target needs neither the positives' vectors nor mined negatives
        positives = [index_text(p.title, p.positive, chunks.embed_title) for p in pairs]
        query_vectors = searcher.embedder.encode([p.query for p in pairs])
        positive_vectors = searcher.embedder.encode(positives)
        mined = mine_pair_negatives(chunks, pairs, query_vectors, positive_vectors,
                                    config.negatives if config.tower == "both" else 0, config.depth,
                                    config.relative_margin)
        counts.update(mined.counts)
    lr = config.lr or (1e-4 if config.tower == "query" else 2e-5)
    fit_config = config.model_copy(update={"lr": lr})
    held_out = held_out_questions(chunks, eval_data) if eval_data else []
    result = TrainResult(out=out, method="unsupervised", examples=0, counts=counts,
                         extra={"tower": config.tower, "pairs": list(config.pairs)})
    if config.target == "hybrid":
        from ragtune.train.retriever.losses import LSRLoss

        dataset, vectors, taught = hybrid_rank_dataset(searcher, [p.query for p in pairs], config.teacher_k)
        result.counts.update(taught)
        result.prepare_seconds = time.perf_counter() - started
        fit = train_query_tower(base, dataset, lambda model: LSRLoss(model, vectors, tau=config.teacher_tau,
                                                                     temperature=config.temperature),
                                out, "unsupervised", fit_config, progress,
                                "unsupervised training (query tower, hybrid ranking)")
        result.examples = len(dataset)
        result.extra["target"] = "hybrid"
        if eval_data:
            before_after(ws, searcher, chunks, eval_data, None, out, result)
    elif config.tower == "query":
        n_index = len(chunks.ids)
        doc_vectors = np.vstack([searcher.vectors(chunks.ids), positive_vectors]).astype(np.float32)
        by_doc: dict[str, list[int]] = {}
        for j, p in enumerate(pairs):
            by_doc.setdefault(p.doc_id, []).append(n_index + j)
        # another pair's positive from the same document is no negative either
        masked = [m + [r for r in by_doc[p.doc_id] if r != n_index + i]
                  for i, (p, m) in enumerate(zip(pairs, mined.masked, strict=True))]
        result.prepare_seconds = time.perf_counter() - started
        fit = fit_query_tower(base, doc_vectors, [p.query for p in pairs], [[n_index + i] for i in range(len(pairs))],
                              masked, out, "unsupervised", fit_config, progress, "unsupervised training (query tower)")
        result.examples = len(pairs)
        if eval_data:
            before_after(ws, searcher, chunks, eval_data, None, out, result)
    else:
        rows: dict[str, list[str]] = {"anchor": [], "positive": []}
        for j in range(config.negatives):
            rows[f"negative_{j + 1}"] = []
        for p, text, negatives in zip(pairs, positives, mined.negatives, strict=True):
            if len(negatives) < config.negatives:
                continue
            rows["anchor"].append(p.query)
            rows["positive"].append(text)
            for j, cid in enumerate(negatives):
                rows[f"negative_{j + 1}"].append(chunks.doc_text(cid))
        if len(rows["anchor"]) < 2:
            raise RetrieverDataError("fewer than 2 pairs kept enough hard negatives: lower --negatives")
        result.before = retrieval_scores(searcher, chunks, held_out) if held_out else {}
        result.prepare_seconds = time.perf_counter() - started
        fit = fit_both_towers(base, rows, out, "unsupervised", fit_config, progress, "unsupervised training")
        result.examples = len(rows["anchor"])
        if config.reembed:
            reembed_with(ws, fit, result, progress)
            if held_out:
                result.after = retrieval_scores(Searcher(ws), chunks, held_out)
        result.extra["eval_questions"] = len(held_out)
    result.steps, result.losses, result.train_seconds = fit.steps, fit.losses, fit.seconds
    result.peak_rss_mb = peak_rss_mb()
    fit.spec.metrics = {"before": result.before, "after": result.after}
    fit.spec.save(out)
    write_manifest(ws, "train-retriever-unsupervised", pairs_file, config.model_dump(), result)
    return result


def hybrid_rank_dataset(searcher: Searcher, queries: list[str], k: int) -> tuple[Any, Any, dict[str, int]]:
    """(dataset, frozen candidate vectors, counts) in `LSRLoss`'s label layout: per query, the hybrid search's top
    `k` chunks as compact rows and -rank as their scores (LSRLoss divides them by tau). Queries with fewer than `k`
    hits are left out (every row of the loss needs exactly k candidates)."""
    import torch
    from datasets import Dataset

    kept_queries: list[str] = []
    rankings: list[list[str]] = []
    short = 0
    for query in queries:
        hits = searcher.search(query, k=k, mode="hybrid")
        ids = list(dict.fromkeys(h.chunk_id for h in hits))[:k]
        if len(ids) < k:
            short += 1
            continue
        kept_queries.append(query)
        rankings.append(ids)
    if len(kept_queries) < 2:
        raise RetrieverDataError(f"fewer than 2 pseudo-queries have {k} hybrid hits: lower teacher_k")
    unique = sorted({c for r in rankings for c in r})
    position = {c: i for i, c in enumerate(unique)}
    labels = [[[float(position[c]) for c in ranking], [-float(rank) for rank in range(k)]] for ranking in rankings]
    dataset = Dataset.from_dict({"query": kept_queries, "label": labels})
    vectors = torch.from_numpy(np.ascontiguousarray(searcher.vectors(unique)))
    return dataset, vectors, {"hybrid_taught": len(kept_queries), "hybrid_short": short}
