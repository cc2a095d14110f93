"""Retrieval evaluation against BEIR qrels: nDCG@10, recall@10, recall@100 and MRR@10 (`metrics.BEIR_METRICS`), per
search mode and per retriever, computed as BEIR and MTEB compute them (graded nDCG, macro average over queries).

The corpus must already be in the workspace index (`ragtune ingest BEIR_DIR`, which keeps BEIR's ids as document ids);
rankings are of documents (a document's best chunk gives its rank), at least `depth` (100) distinct documents deep.
A reranker reorders the first stage's top `rerank_candidates` documents and leaves the rest of the ranking in place,
as BEIR's reranking evaluation does, so recall@100 stays the first stage's.

Python API (the `ragtune eval-retrieval` command is a thin layer over it):

    from ragtune.datasets.beir import load_beir
    from ragtune.eval.retrieval import RetrievalEvalConfig, evaluate_retrieval

    data = load_beir("scifact", splits=["test"], corpus=False)
    queries, qrels = data.split("test")
    report = evaluate_retrieval("ws", queries, qrels, RetrievalEvalConfig(retrievers={"base": None}))
    print(report.results["base"]["dense"]["ndcg@10"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ragtune import metrics
from ragtune.config import SearchConfig
from ragtune.datasets.beir import BeirQuery, Qrels, relevant
from ragtune.index.store import ChunkStore
from ragtune.retrieve.search import Searcher
from ragtune.workspace import Workspace

MODES = ("dense", "bm25", "hybrid")
RERANKED = "+rerank"  # suffix of a mode whose first stage a reranker reordered: "dense+rerank"


class RetrievalEvalConfig(BaseModel):
    """What to evaluate: each retriever (name -> trained retriever folder, None = the index's own embedder) in each
    mode, and each mode again through a reranker when one is given."""

    retrievers: dict[str, str | None] = Field(default_factory=lambda: dict[str, str | None](base=None))
    modes: list[str] = Field(default_factory=lambda: list(MODES))
    reranker: str | None = None
    rerank_candidates: int = Field(default=100, ge=1)
    depth: int = Field(default=100, ge=10)  # distinct documents ranked per query (recall@100 needs 100)
    search: SearchConfig = Field(default_factory=SearchConfig)  # hybrid's fusion settings, dense backend, ...


class RetrievalReport(BaseModel):
    """Mean scores per retriever and mode (`results[retriever][mode][metric]`), what was indexed of the qrels, and
    optionally every query's own scores (`per_query[retriever][mode][query_id]`) for paired comparisons."""

    queries: int
    results: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)
    coverage: dict[str, Any] = Field(default_factory=dict)
    per_query: dict[str, dict[str, dict[str, dict[str, float]]]] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


def qrels_coverage(workspace: Workspace | str | Path, qrels: Qrels) -> dict[str, Any]:
    """How many relevant documents of the qrels are in the index: a corpus ingested partly (or under other ids)
    scores low for a reason that is not the retriever's."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    indexed = set(ChunkStore(ws).scan(["doc_id"])["doc_id"].to_pylist())
    wanted = set().union(*(relevant(d) for d in qrels.values())) if qrels else set()
    found = len(wanted & indexed)
    return {"relevant_docs": len(wanted), "indexed": found, "share": found / len(wanted) if wanted else 0.0,
            "index_docs": len(indexed)}


def ranked_docs(searcher: Searcher, query: str, mode: str, depth: int) -> list[str]:
    """The first `depth` distinct documents of a search, in rank order (chunks asked for until that many documents
    came back, or the index ran out)."""
    k = depth + depth // 2
    while True:
        hits = searcher.search(query, k=k, mode=mode)
        docs = list(dict.fromkeys(h.doc_id for h in hits))
        if len(docs) >= depth or len(hits) < k:
            return docs[:depth]
        k *= 2


def reranked_docs(first_stage: list[str], reranker: Searcher, query: str, mode: str, candidates: int) -> list[str]:
    """The reranker's order of the first stage's top `candidates` documents, then the rest of the first stage."""
    top = list(dict.fromkeys(h.doc_id for h in reranker.search(query, k=candidates, mode=mode)))
    seen = set(top)
    return top + [d for d in first_stage if d not in seen]


def evaluate_retrieval(
    workspace: Workspace | str | Path,
    queries: Sequence[BeirQuery],
    qrels: Qrels,
    config: RetrievalEvalConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    keep_per_query: bool = False,
) -> RetrievalReport:
    """Score every (retriever, mode[, reranker]) on the queries; `progress(done, total)` after each query pass."""
    config = config or RetrievalEvalConfig()
    for mode in config.modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if not queries:
        raise ValueError("no queries to evaluate")
    report = RetrievalReport(queries=len(queries), coverage=qrels_coverage(workspace, qrels))
    plan = [(name, path, mode) for name, path in config.retrievers.items() for mode in config.modes
            if not (mode == "bm25" and path is not None)]  # BM25 never reads the query encoder
    if any(path is not None for path in config.retrievers.values()) and "bm25" in config.modes:
        report.notes.append("bm25 is reported once, under the first retriever: it does not use the query encoder")
    total, done = len(plan) * len(queries), 0
    for name, path, mode in plan:
        cfg = config.search.model_copy(update={"retriever": path, "reranker": None})
        searcher = Searcher(workspace, cfg)
        reranker = (Searcher(workspace, cfg.model_copy(update={"reranker": config.reranker,
                                                               "rerank_candidates": config.rerank_candidates}))
                    if config.reranker else None)
        rows: dict[str, dict[str, dict[str, float]]] = {mode: {}, mode + RERANKED: {}} if reranker else {mode: {}}
        seconds = dict.fromkeys(rows, 0.0)
        for q in queries:
            t0 = time.perf_counter()
            ranking = ranked_docs(searcher, q.text, mode, config.depth)
            seconds[mode] += time.perf_counter() - t0
            rows[mode][q.query_id] = metrics.beir_metrics(ranking, qrels[q.query_id])
            if reranker is not None:
                t0 = time.perf_counter()
                ranking = reranked_docs(ranking, reranker, q.text, mode, config.rerank_candidates)
                seconds[mode + RERANKED] += time.perf_counter() - t0
                rows[mode + RERANKED][q.query_id] = metrics.beir_metrics(ranking, qrels[q.query_id])
            done += 1
            if progress is not None:
                progress(done, total)
        for key, per_query in rows.items():
            scores = metrics.mean_metrics(list(per_query.values()))
            scores["n"] = float(len(per_query))
            scores["ms_per_query"] = 1000 * seconds[key] / len(per_query)
            report.results.setdefault(name, {})[key] = scores
            if keep_per_query:
                report.per_query.setdefault(name, {})[key] = per_query
    return report
