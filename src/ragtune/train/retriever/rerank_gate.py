"""Rerank only when the first stage is uncertain: a margin gate, calibrated on training questions and measured.

A small reranker trained on a few hundred questions helps where the first stage hesitates and hurts where it was
sure (measured on HotpotQA: always reranking cost recall). The first stage's uncertainty is read from its own
scores: the margin between its top-1 and top-2 hit. The gate reranks a query when that margin is below a threshold;
the threshold is the one that maximises nDCG@k summed over the training questions (ties: the smaller threshold,
fewer reranker calls), then the same threshold is measured on held-out questions against never and always
reranking. Margins are on the first stage's scale (cosine for dense, fused RRF for hybrid): a gate is calibrated
per mode. `calibrate_gate` stores it in the reranker's folder (reranker.json, "gate"); every search that loads the
reranker applies it (`ragtune.index.rerank.Gate`, `SearchConfig.rerank_gate`); `gated_search` applies a given one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune import metrics
from ragtune.index.rerank import SPEC_FILE, Gate, Reranker, top_margin
from ragtune.records import Hit
from ragtune.retrieve.search import Searcher
from ragtune.train.retriever.contrastive import held_out_questions
from ragtune.train.retriever.data import Resolved
from ragtune.train.retriever.lsr import prepare
from ragtune.workspace import Workspace

NEVER = 0.0  # margins are >= 0, and the gate reranks below the threshold: 0 never reranks


@dataclass(frozen=True)
class Outcome:
    """One question: the first stage's top-1 / top-2 margin and nDCG@k without and with reranking."""

    margin: float
    first_stage: float
    reranked: float


@dataclass
class GateReport:
    """The chosen threshold (inf: always rerank, 0: never) and nDCG@k of never / always / gated reranking."""

    threshold: float
    mode: str
    candidates: int
    k: int
    train: dict[str, float] = field(default_factory=dict)
    held_out: dict[str, float] = field(default_factory=dict)


def outcomes(searcher: Searcher, reranker: Reranker, questions: list[Resolved], mode: str, candidates: int,
             k: int) -> list[Outcome]:
    """Each question's margin and its nDCG@k (documents) before and after reranking the first stage's top
    `candidates`."""
    rows = []
    for r in questions:
        query = r.question.question
        hits = searcher.search(query, k=candidates, mode=mode)
        if not hits:
            continue
        reranked = reranker.rerank(query, hits, k=len(hits))
        gold = sorted(r.gold_docs)
        rows.append(Outcome(top_margin(hits), metrics.ndcg_at_k([h.doc_id for h in hits], gold, k),
                            metrics.ndcg_at_k([h.doc_id for h in reranked], gold, k)))
    return rows


def choose_threshold(rows: list[Outcome]) -> float:
    """The threshold (rerank when margin < it) with the best total nDCG over `rows`; the smallest such one."""
    margins = sorted({o.margin for o in rows if math.isfinite(o.margin)})
    # thresholds between consecutive margins, plus never (0) and always (inf)
    choices = [NEVER, *((a + b) / 2 for a, b in zip(margins, margins[1:], strict=False)), math.inf]
    best, best_total = NEVER, -math.inf
    for t in choices:
        total = sum(o.reranked if o.margin < t else o.first_stage for o in rows)
        if total > best_total + 1e-12:
            best, best_total = t, total
    return best


def gate_scores(rows: list[Outcome], threshold: float) -> dict[str, float]:
    """Mean nDCG@k of never / always / gated reranking and the share of queries the gate reranks."""
    n = len(rows)
    if not n:
        return {"n": 0.0}
    gated = [o.reranked if o.margin < threshold else o.first_stage for o in rows]
    return {"n": float(n), "first_stage": sum(o.first_stage for o in rows) / n,
            "always": sum(o.reranked for o in rows) / n, "gated": sum(gated) / n,
            "rerank_share": sum(o.margin < threshold for o in rows) / n}


def calibrate_gate(
    workspace: Workspace | str | Path,
    reranker: str | Path,
    data: str | Path,
    eval_data: str | Path | None = None,
    mode: str = "hybrid",
    candidates: int = 20,
    k: int = 10,
    limit: int | None = None,
    save: bool = True,
) -> GateReport:
    """Choose the margin threshold on `data`'s train-split questions (first `limit`), measure it on the eval-split
    questions of `eval_data` (else `data`), and (save) record it in the reranker folder's reranker.json."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    searcher = Searcher(ws)
    chunks, train, _ = prepare(ws, data, searcher, limit)
    model = Reranker(str(reranker), embed_title=searcher.settings.embed_title)
    train_rows = outcomes(searcher, model, train, mode, candidates, k)
    threshold = choose_threshold(train_rows)
    report = GateReport(threshold, mode, candidates, k, train=gate_scores(train_rows, threshold))
    held_out = held_out_questions(chunks, data, eval_data)
    if held_out:
        report.held_out = gate_scores(outcomes(searcher, model, held_out, mode, candidates, k), threshold)
    if save:
        spec_path = Path(reranker) / SPEC_FILE
        spec: dict[str, Any] = json.loads(spec_path.read_text(encoding="utf-8")) if spec_path.exists() else {}
        gate = asdict(report)
        gate["threshold"] = None if math.isinf(threshold) else threshold  # None: always rerank
        spec["gate"] = gate
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return report


def gated_search(searcher: Searcher, reranker: Reranker, query: str, k: int, threshold: float | None,
                 mode: str = "hybrid", candidates: int = 20) -> list[Hit]:
    """The first stage's top-k, reranked from its top `candidates` only when its margin is below `threshold`
    (None: always)."""
    hits = searcher.search(query, k=candidates, mode=mode)
    if Gate(threshold, mode).reranks(hits, mode):
        return reranker.rerank(query, hits, k)
    return hits[:k]
