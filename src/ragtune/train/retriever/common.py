"""What every retriever trainer shares: training arguments for CPU-friendly runs, before/after scoring, results."""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune import metrics
from ragtune.index.retriever import RetrieverSpec
from ragtune.train.retriever.data import IndexChunks, Resolved
from ragtune.train.retriever.progress import StepCallback, bar


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class TrainResult:
    """What a retriever / reranker run produced; the CLI prints it, the manifest and benchmark record it."""

    out: Path
    method: str
    examples: int
    steps: int = 0
    train_seconds: float = 0.0
    prepare_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    losses: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def training_args(cls: Any, epochs: float, lr: float, batch_size: int, seed: int, n_examples: int,
                  max_steps: int | None = None, **extra: Any):
    """Training arguments for a short run: no checkpoints (the caller saves the model), no reporting, 10% warm-up.
    `max_steps` (when given) fixes the number of optimiser steps whatever the data size: runs comparable by budget."""
    steps = max_steps or max(1, -(-n_examples // batch_size)) * max(1, int(np.ceil(epochs)))
    return cls(
        output_dir=tempfile.mkdtemp(prefix="ragtune-train-"),
        num_train_epochs=epochs,
        max_steps=max_steps or -1,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=max(0, int(0.1 * steps)),
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, min(10, steps // 10 or 1)),
        disable_tqdm=True,
        seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        **extra,
    )


def quiet_trainer(trainer: Any) -> Any:
    """Drop transformers' log printer: the rich bar shows the loss, and stdout stays clean for --json users."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def run_trainer(trainer_cls: Any, args_cls: Any, model: Any, dataset: Any, loss: Any, config: Any, title: str,
                progress: bool = False, **extra: Any) -> tuple[int, list[float], float]:
    """Train `model` on `dataset` with `loss` (a sentence-transformers trainer class and its arguments class), the
    run's shape from `config` (epochs, lr, batch_size, seed, max_steps); (steps, logged losses, seconds)."""
    args = training_args(args_cls, float(config.epochs or 1), float(config.lr), min(config.batch_size, len(dataset)),
                         config.seed, len(dataset), config.max_steps, **extra)
    t0 = time.perf_counter()
    with bar(title, progress) as b:
        callback = StepCallback(b)
        trainer = quiet_trainer(trainer_cls(model=model, args=args, train_dataset=dataset, loss=loss,
                                            callbacks=[callback]))
        state = trainer.train()
    return int(state.global_step), callback.losses, time.perf_counter() - t0


def save_query_tower(model: Any, out: Path, method: str, base: str) -> RetrieverSpec:
    """A trained query encoder under out/query_encoder, with the spec that pairs it with `base`'s indexed vectors."""
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / "query_encoder"))
    spec = RetrieverSpec(kind="query-tower", method=method, query_encoder="query_encoder", document_encoder=base,
                         base=base)
    spec.save(out)
    return spec


def retrieval_scores(searcher: Any, chunks: IndexChunks, questions: list[Resolved], k: int = 10,
                     mode: str = "dense") -> dict[str, float]:
    """recall@1/5/k, MRR and nDCG@k of the gold documents (documents, not chunks) over held-out questions."""
    if not questions:
        return {}
    totals: dict[str, float] = {}
    t0 = time.perf_counter()
    for r in questions:
        ranked = [h.doc_id for h in searcher.search(r.question.question, k=k, mode=mode)]
        gold = sorted(r.gold_docs)
        row = {
            "recall@1": metrics.recall_at_k(ranked, gold, 1),
            "recall@5": metrics.recall_at_k(ranked, gold, 5),
            f"recall@{k}": metrics.recall_at_k(ranked, gold, k),
            "mrr": metrics.mrr(ranked, gold, k),
            f"ndcg@{k}": metrics.ndcg_at_k(ranked, gold, k),
        }
        for key, value in row.items():
            totals[key] = totals.get(key, 0.0) + value
    out = {key: value / len(questions) for key, value in totals.items()}
    out["n"] = float(len(questions))
    out["seconds"] = time.perf_counter() - t0
    return out
