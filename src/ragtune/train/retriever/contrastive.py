"""Contrastive embedding fine-tuning: MultipleNegativesRankingLoss over (question, positive chunk, hard negatives).

Each question's positive is the chunk it was written about (every gold chunk, for multi-hop questions); its negatives
are the dense index's top hits that are not gold (false negatives filtered: same gold document, holding the answer, or
scoring too close to the positive). In-batch, every other row's chunks are negatives too, so batches come from
sentence-transformers' NoDuplicatesBatchSampler: no text twice in a batch, hence no two questions of the same chunk
(one would be trained away from its own positive). Both towers change, so the index is re-embedded afterwards,
incrementally and resumably (`ragtune.index.reembed`).

`tower="query"` trains the query encoder alone against the index's frozen document vectors
(`FrozenIndexContrastiveLoss`): every chunk of the index is a negative in every step (false negatives masked: other
chunks of a gold document, chunks holding a distinctive answer), a step costs one short query forward pass, and the
index is kept as it is, so the result is a query tower like LSR's. On a CPU this is the recipe that fits: the
whole-corpus re-embedding alone costs more than training on every question (see benchmarks/retriever.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from ragtune.index.embedding import Embedder
from ragtune.index.reembed import reembed_index
from ragtune.index.retriever import RetrieverSpec
from ragtune.models import resolve_embedder
from ragtune.retrieve.search import Searcher
from ragtune.train.retriever.common import (
    TrainResult,
    peak_rss_mb,
    retrieval_scores,
    run_trainer,
    save_query_tower,
)
from ragtune.train.retriever.data import (
    IndexChunks,
    Resolved,
    RetrieverDataError,
    gold_label_rows,
    load_questions,
    mine_negatives,
    padded,
)
from ragtune.train.retriever.lsr import before_after, prepare, write_manifest
from ragtune.train.retriever.progress import bar
from ragtune.workspace import Workspace


class ContrastiveConfig(BaseModel):
    """Settings of one contrastive run."""

    # query: the query encoder against the frozen index (no re-embedding); both: MNRL, index re-embedded.
    # Chosen on 102 held-out train-split questions (benchmarks/retriever.py): equal recall, a quarter of the time.
    tower: Literal["query", "both"] = "query"
    negatives: Annotated[int, Field(ge=0)] = 0  # tower=both: mined hard negatives per row (a document pass each)
    depth: Annotated[int, Field(ge=1)] = 30  # how deep in the dense ranking negatives are mined
    relative_margin: Annotated[float, Field(ge=0, lt=1)] = 0.05
    epochs: Annotated[float | None, Field(gt=0)] = None  # None: 2 (query tower) / 1 (both)
    max_steps: Annotated[int | None, Field(ge=1)] = None  # fixed optimiser steps (overrides epochs)
    lr: Annotated[float | None, Field(gt=0)] = None  # None: 1e-4 (query tower) / 2e-5 (both)
    batch_size: Annotated[int, Field(ge=2)] = 32
    scale: Annotated[float, Field(gt=0)] = 20.0  # the softmax's inverse temperature (MNRL's default)
    max_seq_length: Annotated[int | None, Field(ge=8)] = 128  # tower=both: training truncation (chunks ~110 tokens)
    limit: Annotated[int | None, Field(ge=1)] = None
    reembed: bool = True  # tower=both only: a query tower never needs it
    seed: int = 0

    def resolved(self) -> ContrastiveConfig:
        """A copy with the tower's defaults filled in."""
        query = self.tower == "query"
        return self.model_copy(update={"epochs": self.epochs or (2.0 if query else 1.0),
                                       "lr": self.lr or (1e-4 if query else 2e-5)})


@dataclass
class Fit:
    """What one fit produced: the saved retriever's spec, optimiser steps, logged losses, seconds of training."""

    spec: RetrieverSpec
    steps: int
    losses: list[float]
    seconds: float


def fit_query_tower(base: str, doc_vectors: np.ndarray, queries: list[str], positives: list[list[int]],
                    masked: list[list[int]], out: Path, method: str, config: Any, progress: bool = False,
                    title: str = "contrastive training (query tower)") -> Fit:
    """InfoNCE of a fresh copy of `base`'s query encoder against frozen `doc_vectors` (every row a negative but the
    query's `positives` and `masked` rows); saved under out/query_encoder as a query tower over `base`'s index.
    `config` supplies epochs, max_steps, lr, batch_size, scale and seed (a ContrastiveConfig or alike)."""
    import torch
    from datasets import Dataset

    from ragtune.train.retriever.losses import FrozenIndexContrastiveLoss

    width = max(max(len(p) for p in positives), max(len(m) for m in masked), 1)
    labels = [[padded(p, width), padded(m, width)] for p, m in zip(positives, masked, strict=True)]
    dataset = Dataset.from_dict({"query": queries, "label": labels})
    vectors = torch.from_numpy(np.ascontiguousarray(doc_vectors))
    return train_query_tower(base, dataset, lambda model: FrozenIndexContrastiveLoss(model, vectors,
                                                                                     scale=config.scale),
                             out, method, config, progress, title)


def train_query_tower(base: str, dataset: Any, loss_of: Callable[[Any], Any], out: Path, method: str, config: Any,
                      progress: bool, title: str) -> Fit:
    """A fresh, seeded copy of `base`'s query encoder trained on `dataset` with the loss `loss_of(model)` builds (any
    loss over frozen document vectors); saved under out/query_encoder as a query tower over `base`'s index."""
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    torch.manual_seed(config.seed)
    model = SentenceTransformer(resolve_embedder(base).path)
    steps, losses, seconds = run_trainer(SentenceTransformerTrainer, SentenceTransformerTrainingArguments, model,
                                         dataset, loss_of(model), config, title, progress)
    return Fit(save_query_tower(model, out, method, base), steps, losses, seconds)


def fit_both_towers(base: str, rows: dict[str, list[Any]], out: Path, method: str, config: Any,
                    progress: bool = False, title: str = "contrastive training",
                    loss_of: Callable[[Any], Any] | None = None) -> Fit:
    """MultipleNegativesRankingLoss over (anchor, positive, negative_1..n) rows, batches without duplicate texts;
    the model is saved under out/model and the spec names it as both towers (the index must be re-embedded).
    `loss_of(model)`, when given, builds another loss over the same rows (GPL's MarginMSE reads a `label` column)."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    dataset = Dataset.from_dict(rows)
    torch.manual_seed(config.seed)
    model = SentenceTransformer(resolve_embedder(base).path)
    full_length = model.max_seq_length
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    loss = loss_of(model) if loss_of is not None else MultipleNegativesRankingLoss(model, scale=config.scale)
    steps, losses, seconds = run_trainer(SentenceTransformerTrainer, SentenceTransformerTrainingArguments, model,
                                         dataset, loss, config, title, progress,
                                         batch_sampler=BatchSamplers.NO_DUPLICATES)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = (out / "model").resolve()
    model.max_seq_length = full_length  # the index embeds whole chunks, whatever training truncated
    model.save(str(model_dir))
    spec = RetrieverSpec(kind="dual-encoder", method=method, query_encoder="model", document_encoder=str(model_dir),
                         base=base)
    spec.save(out)
    return Fit(spec, steps, losses, seconds)


def reembed_with(ws: Workspace, fit: Fit, result: TrainResult, progress: bool = False) -> None:
    """Re-embed the whole index with a both-towers fit's model (incremental, resumable), timing it in `result`."""
    t1 = time.perf_counter()
    with bar("re-embedding index", progress) as b:
        result.counts["reembedded"] = reembed_index(ws, Embedder(fit.spec.document_encoder), progress=b.update)
    result.extra["reembed_seconds"] = time.perf_counter() - t1


def train_contrastive(
    workspace: Workspace | str | Path,
    data: str | Path,
    config: ContrastiveConfig | None = None,
    out: str | Path | None = None,
    eval_data: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Fine-tune the embedder on the questions' chunks, save it to `out`, and re-embed the index with it."""
    config = (config or ContrastiveConfig()).resolved()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    out = Path(out) if out else ws.train_dir("retriever-contrastive")
    started = time.perf_counter()
    searcher = Searcher(ws)
    chunks, resolved, counts = prepare(ws, data, searcher, config.limit)
    base = searcher.settings.embedder
    if config.tower == "query":
        return _train_query_tower(ws, data, config, out, eval_data, progress, searcher, chunks, resolved, counts,
                                  started)
    query_vectors = searcher.embedder.encode([r.question.question for r in resolved])
    counts.update(mine_negatives(chunks, resolved, query_vectors, config.negatives, config.depth,
                                 config.relative_margin))
    rows: dict[str, list[str]] = {"anchor": [], "positive": []}
    for j in range(config.negatives):
        rows[f"negative_{j + 1}"] = []
    for r in resolved:
        if len(r.negatives) < config.negatives:
            continue  # every row needs the same columns; a short one is rarer than a useless one
        for positive in r.positives:
            rows["anchor"].append(r.question.question)
            rows["positive"].append(chunks.doc_text(positive))
            for j, cid in enumerate(r.negatives[: config.negatives]):
                rows[f"negative_{j + 1}"].append(chunks.doc_text(cid))
    if len(rows["anchor"]) < 2:
        raise RetrieverDataError("fewer than 2 usable training rows: contrastive training needs in-batch negatives")
    counts["rows"] = len(rows["anchor"])
    held_out = held_out_questions(chunks, data, eval_data)
    before = retrieval_scores(searcher, chunks, held_out) if held_out else {}
    prepare_seconds = time.perf_counter() - started

    fit = fit_both_towers(base, rows, out, "contrastive", config, progress)
    result = TrainResult(out=out, method="contrastive", examples=len(rows["anchor"]), steps=fit.steps,
                         train_seconds=fit.seconds, prepare_seconds=prepare_seconds, peak_rss_mb=peak_rss_mb(),
                         losses=fit.losses, counts=counts, before=before)
    return finish_both_towers(ws, fit, result, chunks, held_out, config.reembed, progress,
                              "train-retriever-contrastive", data, config.model_dump())


def finish_both_towers(ws: Workspace, fit: Any, result: TrainResult, chunks: IndexChunks, held_out: list,
                       reembed: bool, progress: bool, stage: str, data: str | Path, config: dict) -> TrainResult:
    """After a both-towers fit: re-embed the index with the new model (when asked) and score the held-out questions
    on it, then save the retriever spec with its before / after metrics and the workspace manifest."""
    if reembed:
        reembed_with(ws, fit, result, progress)
        if held_out:
            result.after = retrieval_scores(Searcher(ws), chunks, held_out)
    result.extra["eval_questions"] = len(held_out)
    result.peak_rss_mb = peak_rss_mb()
    fit.spec.metrics = {"before": result.before, "after": result.after}
    fit.spec.save(result.out)
    write_manifest(ws, stage, data, config, result)
    return result


def held_out_questions(chunks: IndexChunks, data: str | Path, eval_data: str | Path | None = None) -> list:
    """Eval-split questions of `eval_data` (else `data`) whose gold chunks are indexed; none when no file has any."""
    try:
        questions = load_questions(eval_data or data, split="eval")
    except RetrieverDataError:
        return []
    return [r for r in (chunks.resolve(q) for q in questions) if r is not None]


def _train_query_tower(ws: Workspace, data: str | Path, config: ContrastiveConfig, out: Path,
                       eval_data: str | Path | None, progress: bool, searcher: Searcher, chunks: IndexChunks,
                       resolved: list[Resolved], counts: dict[str, int], started: float) -> TrainResult:
    """tower="query": InfoNCE of the query encoder over the whole frozen index; saved as a query tower."""
    base = searcher.settings.embedder
    positives, masked = gold_label_rows(chunks, resolved)
    counts["masked_false_negatives"] = sum(len(m) for m in masked)
    counts["rows"] = len(resolved)
    counts["positive_pairs"] = sum(len(p) for p in positives)
    doc_vectors = searcher.vectors(chunks.ids)
    prepare_seconds = time.perf_counter() - started

    fit = fit_query_tower(base, doc_vectors, [r.question.question for r in resolved], positives, masked, out,
                          "contrastive", config, progress)
    result = TrainResult(out=out, method="contrastive", examples=len(resolved), steps=fit.steps,
                         train_seconds=fit.seconds, prepare_seconds=prepare_seconds, peak_rss_mb=peak_rss_mb(),
                         losses=fit.losses, counts=counts, extra={"tower": "query"})
    before_after(ws, searcher, chunks, data, eval_data, out, result)
    result.peak_rss_mb = peak_rss_mb()
    fit.spec.metrics = {"before": result.before, "after": result.after}
    fit.spec.save(out)
    write_manifest(ws, "train-retriever-contrastive", data, config.model_dump(), result)
    return result
