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
With hard negatives only and BCE, which are by construction closer to the question than many gold chunks (a multi-hop
question's second paragraph), a small training set teaches the head "similar means irrelevant" (measured: recall@5
0.79 -> 0.11 on 60 HotpotQA questions); random chunks anchor the easy end of the scale there. The saved folder is a
plain CrossEncoder: `ragtune search --rerank FOLDER` uses it.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from ragtune.models import resolve_embedder
from ragtune.retrieve.search import Searcher
from ragtune.train.retriever.common import TrainResult, peak_rss_mb, quiet_trainer, training_args
from ragtune.train.retriever.data import IndexChunks, Resolved, RetrieverDataError, mine_negatives
from ragtune.train.retriever.lsr import prepare, write_manifest
from ragtune.train.retriever.progress import StepCallback, bar
from ragtune.workspace import Workspace

SPEC_FILE = "reranker.json"


class RerankerConfig(BaseModel):
    """Settings of one reranker run."""

    base: str | None = None  # default: the bundled MiniLM weights
    loss: Literal["listwise", "bce"] = "listwise"
    negatives: Annotated[int, Field(ge=0)] = 3  # mined hard negatives per question
    random_negatives: Annotated[int, Field(ge=0)] = 3  # bce: random chunks per question
    in_batch_negatives: Annotated[int, Field(ge=1)] = 1  # listwise: other rows' chunks per row
    depth: Annotated[int, Field(ge=1)] = 20  # mine in the first stage's top-N: what the reranker will read
    relative_margin: Annotated[float, Field(ge=0, lt=1)] = 0.05
    epochs: Annotated[float, Field(gt=0)] = 1.0
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
) -> TrainResult:
    """Train a cross-encoder and save it to `out` (default WORKSPACE/train/reranker)."""
    import torch
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

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
                                 config.relative_margin))
    if config.loss == "listwise":
        return _train_listwise(ws, data, config, out, progress, chunks, resolved, counts, started)
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
    prepare_seconds = time.perf_counter() - started

    base = config.base or "all-minilm-l6-v2"
    base_path = resolve_embedder(base).path  # a bundled name or folder; a hub id passes through unchanged
    torch.manual_seed(config.seed)
    model = CrossEncoder(base_path, num_labels=1, max_length=config.max_length)
    pos_weight = torch.tensor((len(rows["label"]) - positives) / positives)
    loss = BinaryCrossEntropyLoss(model, pos_weight=pos_weight)
    dataset = Dataset.from_dict(rows).shuffle(seed=config.seed)
    args = training_args(CrossEncoderTrainingArguments, config.epochs, config.lr, config.batch_size, config.seed,
                         len(dataset))
    t0 = time.perf_counter()
    with bar("reranker training", progress) as b:
        callback = StepCallback(b)
        trainer = quiet_trainer(
            CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[callback])
        )
        state = trainer.train()
    train_seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    (out / SPEC_FILE).write_text(json.dumps({"kind": "cross-encoder", "base": base, "rows": len(dataset)}, indent=2),
                                 encoding="utf-8")
    result = TrainResult(out=out, method="reranker", examples=len(dataset), steps=int(state.global_step),
                         train_seconds=train_seconds, prepare_seconds=prepare_seconds, peak_rss_mb=peak_rss_mb(),
                         losses=callback.losses, counts=counts)
    write_manifest(ws, "train-reranker", data, config.model_dump(), result)
    return result


def _train_listwise(ws: Workspace, data: str | Path, config: RerankerConfig, out: Path, progress: bool,
                    chunks: IndexChunks, resolved: list[Resolved], counts: dict[str, int], started: float
                    ) -> TrainResult:
    """loss="listwise": (question, gold chunk, first-stage hard negatives) rows, softmax cross-entropy per row."""
    import torch
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    rows: dict[str, list[str]] = {"query": [], "positive": []}
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
    prepare_seconds = time.perf_counter() - started

    base = config.base or "all-minilm-l6-v2"
    torch.manual_seed(config.seed)
    model = CrossEncoder(resolve_embedder(base).path, num_labels=1, max_length=config.max_length)
    loss = MultipleNegativesRankingLoss(model, num_negatives=config.in_batch_negatives)
    dataset = Dataset.from_dict(rows)
    args = training_args(CrossEncoderTrainingArguments, config.epochs, config.lr,
                         min(config.batch_size, len(dataset)), config.seed, len(dataset),
                         batch_sampler=BatchSamplers.NO_DUPLICATES)
    t0 = time.perf_counter()
    with bar("reranker training (listwise)", progress) as b:
        callback = StepCallback(b)
        trainer = quiet_trainer(
            CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[callback])
        )
        state = trainer.train()
    train_seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    (out / SPEC_FILE).write_text(json.dumps({"kind": "cross-encoder", "base": base, "loss": "listwise",
                                             "rows": len(dataset)}, indent=2), encoding="utf-8")
    result = TrainResult(out=out, method="reranker", examples=len(dataset), steps=int(state.global_step),
                         train_seconds=train_seconds, prepare_seconds=prepare_seconds, peak_rss_mb=peak_rss_mb(),
                         losses=callback.losses, counts=counts, extra={"loss": "listwise"})
    write_manifest(ws, "train-reranker", data, config.model_dump(), result)
    return result
