"""RA-DIT's LM-supervised retrieval (R-ft): teach the query encoder which chunks help the LM answer.

1. retrieve each training question's top-k chunks with the current retriever (dense: p_R is over dense scores);
2. score each chunk by the LM: log p_LM(answer | chunk, question), batched and cached on disk, so a re-run or a
   run with other training settings costs no LM time;
3. train the query encoder with `LSRLoss` = KL(p_R || p_LSR); documents keep the index's vectors.
The result is a query tower saved beside a spec naming the frozen document tower; the index is not rebuilt.

Pairs files carry no answer. For them the LM scores log p_LM(question | chunk) instead: how well the chunk explains
the question (UPR, Sachan et al. 2022), the same supervision without a reference answer.

The dual loop: `lm_adapter` scores with the RAFT-tuned generator (base LM + its LoRA adapter, through peft), the
student that will read the retrieved chunks, instead of the base LM; the adapter's weights are part of the score
cache key, so base and tuned scores never mix. `gold_weight` mixes the KL with the gold-label InfoNCE over the whole
index (`LSRLoss`). `ragtune.train.retriever.lsr_teacher.lm_gold_first` measures whether a teacher is worth it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field

from ragtune.models import resolve_embedder
from ragtune.prompts import background_turn, with_title
from ragtune.retrieve.search import Searcher
from ragtune.train.retriever.common import TrainResult, peak_rss_mb, retrieval_scores, run_trainer, save_query_tower
from ragtune.train.retriever.data import IndexChunks, Resolved, RetrieverDataError, load_questions
from ragtune.train.retriever.progress import bar
from ragtune.workspace import Manifest, Workspace

TEMPLATE_VERSION = "lsr-v1"  # part of every cache key: change it when the scoring prompt changes


class LSRConfig(BaseModel):
    """Settings of one LSR run (defaults from the RA-DIT paper where it gives them: tau = 0.01)."""

    top_k: Annotated[int, Field(ge=2)] = 10
    tau: Annotated[float, Field(gt=0)] = 0.01
    temperature: Annotated[float, Field(gt=0)] = 0.05  # of p_R; 0.05 is MultipleNegativesRankingLoss's scale of 20
    epochs: Annotated[float, Field(gt=0)] = 1.0
    lr: Annotated[float, Field(gt=0)] = 2e-5
    batch_size: Annotated[int, Field(ge=1)] = 16
    lm: str | None = None  # default: the bundled SmolLM2
    lm_adapter: str | None = None  # a PEFT LoRA folder on `lm` (ws/train/NAME/adapter): the tuned generator teaches
    gold_weight: Annotated[float, Field(ge=0, le=1)] = 0.0  # (1 - w) KL + w gold-label InfoNCE
    scale: Annotated[float, Field(gt=0)] = 20.0  # the gold InfoNCE's inverse temperature
    max_steps: Annotated[int | None, Field(ge=1)] = None  # fixed optimiser steps (overrides epochs)
    lm_batch_size: Annotated[int, Field(ge=1)] = 8
    limit: Annotated[int | None, Field(ge=1)] = None  # train on the first N questions only
    seed: int = 0


def lm_request(question: str, answer: str | None, title: str, text: str) -> tuple[list[dict[str, str]], str]:
    """(messages, continuation) whose log-likelihood scores one chunk: RA-DIT's "Background:" prompt."""
    background = with_title(title, text)
    if answer is not None:
        content = background_turn(background, f"Question: {question}\nAnswer briefly.")
        return [{"role": "user", "content": content}], answer
    content = background_turn(background, "Write a question that this background answers.")
    return [{"role": "user", "content": content}], question


class ScoreCache:
    """LM scores on disk, one JSON line per (LM, prompt, question, target, chunk text); appended as they come."""

    def __init__(self, path: Path):
        self.path = path
        self.scores: dict[str, float] = {}
        if path.exists():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.endswith("\n"):
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        self.scores[row["key"]] = float(row["score"])

    @staticmethod
    def key(lm: str, messages: list[dict[str, str]], continuation: str) -> str:
        blob = json.dumps([TEMPLATE_VERSION, lm, messages, continuation], ensure_ascii=False)
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()

    def add(self, items: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for key, score in items.items():
                f.write(json.dumps({"key": key, "score": score}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.scores.update(items)


def cache_path(ws: Workspace, lm_name: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "-._" else "_" for c in lm_name)[-80:]
    return ws.lsr_cache_dir / f"{slug}.jsonl"


def lm_identity(llm: Any) -> str:
    """What an LM score depends on: the model's name, plus its adapter's weights when one is loaded (the base
    model's name alone would hand a tuned run the base model's cached scores)."""
    from ragtune.hashing import file_hash

    name = str(getattr(llm, "name", "lm"))
    adapter = getattr(llm, "adapter", None)
    if not adapter:
        return name
    weights = next((f for f in (Path(adapter) / "adapter_model.safetensors", Path(adapter) / "adapter_model.bin")
                    if f.exists()), None)
    digest = file_hash(weights)[:12] if weights else Path(adapter).name
    return f"{name}+lora-{digest}"


def load_scorer(lm: str | None, adapter: str | None = None) -> Any:
    """The LM that scores chunks (base, or base + LoRA adapter); refuses an adapter folder that is not one."""
    from ragtune.llm import load_llm

    if adapter and not (Path(adapter) / "adapter_config.json").exists():
        raise FileNotFoundError(f"--lm-adapter {adapter}: not a PEFT LoRA adapter folder (no adapter_config.json); "
                                "pass ws/train/NAME/adapter from `ragtune train generator`")
    return load_llm(lm, adapter=adapter, require=["loglikelihood"])


def dense_candidates(searcher: Searcher, resolved: list[Resolved], top_k: int
                     ) -> tuple[list[Resolved], list[list[str]]]:
    """Each question's dense top-k chunk ids (what p_R ranges over); questions with fewer hits are dropped."""
    query_vectors = searcher.embedder.encode([r.question.question for r in resolved])
    candidates = [[cid for cid, _ in searcher.dense_by_vector(v, top_k)] for v in query_vectors]
    keep = [i for i, c in enumerate(candidates) if len(c) == top_k]
    return [resolved[i] for i in keep], [candidates[i] for i in keep]


def gold_first_counts(chunks: IndexChunks, resolved: list[Resolved], candidates: list[list[str]],
                      lm_scores: list[list[float]]) -> dict[str, int]:
    """How often the LM's favourite candidate is a gold chunk, against the retriever's own first candidate: whether
    the LM's supervision knows more than the retriever does (over the same candidates)."""
    def gold(r: Resolved, cid: str) -> bool:
        return chunks.doc_ids[chunks.row[cid]] in r.gold_docs

    triples = list(zip(resolved, candidates, lm_scores, strict=True))
    return {
        "lm_top_is_gold": sum(gold(r, c[int(np.argmax(s))]) for r, c, s in triples),
        "retriever_top_is_gold": sum(gold(r, c[0]) for r, c, _ in triples),
        "gold_in_candidates": sum(any(gold(r, cid) for cid in c) for r, c, _ in triples),
    }


def score_candidates(
    resolved: list[Resolved],
    candidates: list[list[str]],
    chunks: IndexChunks,
    llm: Any,
    cache: ScoreCache,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[list[list[float]], dict[str, int]]:
    """log p_LM(target | chunk, question) for every candidate chunk of every question, reusing cached scores."""
    keys: list[list[str]] = []
    todo: dict[str, tuple[list[dict[str, str]], str]] = {}
    identity = lm_identity(llm)
    for r, cands in zip(resolved, candidates, strict=True):
        row = []
        for cid in cands:
            i = chunks.row[cid]
            messages, target = lm_request(r.question.question, r.question.answer, chunks.titles[i], chunks.texts[i])
            key = ScoreCache.key(identity, messages, target)
            row.append(key)
            if key not in cache.scores:
                todo[key] = (messages, target)
        keys.append(row)
    pending = list(todo.items())
    block = batch_size * 4
    with bar("LM scoring", progress) as b:
        b.update(0, len(pending))
        for lo in range(0, len(pending), block):
            part = pending[lo : lo + block]
            scores = llm.loglikelihood([req for _, req in part], batch_size=batch_size)
            cache.add({key: float(s) for (key, _), s in zip(part, scores, strict=True)})
            b.update(lo + len(part), len(pending))
    counts = {"lm_scored": len(pending), "lm_cached": sum(len(k) for k in keys) - len(pending)}
    return [[cache.scores[k] for k in row] for row in keys], counts


def prepare(ws: Workspace, data: str | Path, searcher: Searcher, limit: int | None = None, split: str = "train"
            ) -> tuple[IndexChunks, list[Resolved], dict[str, int]]:
    """Training questions whose positives are in this index (LSR needs none, but the filter keeps data honest)."""
    questions = load_questions(data, split=split)
    if not questions:
        raise RetrieverDataError(f"{data} holds no {split}-split questions")
    chunks = IndexChunks(searcher)
    resolved = [r for r in (chunks.resolve(q) for q in questions) if r is not None]
    counts = {"questions": len(questions), "not_in_index": len(questions) - len(resolved)}
    if not resolved:
        raise RetrieverDataError(
            f"none of the {len(questions)} questions in {data} has its positive chunk in the index of {ws.root}: "
            "train on data synthesised from this workspace's documents"
        )
    if limit:
        resolved = resolved[:limit]
    return chunks, resolved, counts


def train_lsr(
    workspace: Workspace | str | Path,
    data: str | Path,
    config: LSRConfig | None = None,
    out: str | Path | None = None,
    eval_data: str | Path | None = None,
    progress: bool = False,
    llm: Any = None,
) -> TrainResult:
    """Train a query tower with LSR and save it to `out` (default WORKSPACE/train/retriever-lsr)."""
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    config = config or LSRConfig()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    out = Path(out) if out else ws.train_dir("retriever-lsr")
    started = time.perf_counter()
    searcher = Searcher(ws)
    chunks, resolved, counts = prepare(ws, data, searcher, config.limit)
    base = searcher.settings.embedder
    resolved, candidates = dense_candidates(searcher, resolved, config.top_k)
    if llm is None:
        llm = load_scorer(config.lm, config.lm_adapter)
    cache = ScoreCache(cache_path(ws, lm_identity(llm)))
    lm_scores, lm_counts = score_candidates(resolved, candidates, chunks, llm, cache, config.lm_batch_size, progress)
    counts.update(lm_counts)
    counts["trained_questions"] = len(resolved)
    # How often the LM's favourite chunk is a gold one: a cheap check that its supervision means something.
    counts.update(gold_first_counts(chunks, resolved, candidates, lm_scores))
    prepare_seconds = time.perf_counter() - started

    dataset, doc_vectors = _lsr_dataset(searcher, chunks, resolved, candidates, lm_scores, config.gold_weight > 0)
    from ragtune.train.retriever.losses import LSRLoss

    torch.manual_seed(config.seed)
    model = SentenceTransformer(resolve_embedder(base).path)
    loss = LSRLoss(model, doc_vectors, tau=config.tau, temperature=config.temperature,
                   gold_weight=config.gold_weight, scale=config.scale)
    steps, losses, train_seconds = run_trainer(SentenceTransformerTrainer, SentenceTransformerTrainingArguments,
                                               model, dataset, loss, config, "LSR training", progress)
    spec = save_query_tower(model, out, "lsr", base)

    result = TrainResult(out=out, method="lsr", examples=len(dataset), steps=steps,
                         train_seconds=train_seconds, prepare_seconds=prepare_seconds, peak_rss_mb=peak_rss_mb(),
                         losses=losses, counts=counts,
                         extra={"lm": lm_identity(llm), "gold_weight": config.gold_weight})
    before_after(ws, searcher, chunks, data, eval_data, out, result)
    spec.metrics = {"before": result.before, "after": result.after}
    spec.save(out)
    write_manifest(ws, "train-retriever-lsr", data, config.model_dump(), result)
    return result


def _lsr_dataset(searcher: Searcher, chunks: IndexChunks, resolved: list[Resolved], candidates: list[list[str]],
                 lm_scores: list[list[float]], with_gold: bool) -> tuple[Any, Any]:
    """(dataset, frozen document vectors) in `LSRLoss`'s label layout.

    Without gold labels the document tower is the index's vectors of the candidates alone, by a compact row number;
    with them it is the whole index (the gold InfoNCE's softmax runs over every chunk) and rows are index rows.
    """
    import torch
    from datasets import Dataset

    from ragtune.train.retriever.data import gold_label_rows, padded

    if not with_gold:
        unique = sorted({cid for c in candidates for cid in c})
        position = {cid: i for i, cid in enumerate(unique)}
        labels = [[[float(position[c]) for c in cands], scores] for cands, scores in zip(candidates, lm_scores,
                                                                                       strict=True)]
        vectors = searcher.vectors(unique)
    else:
        positives, masked = gold_label_rows(chunks, resolved)
        width = max(len(candidates[0]), *(len(p) for p in positives), *(len(m) for m in masked))
        labels = [[padded([chunks.row[c] for c in cands], width), list(scores) + [0.0] * (width - len(scores)),
                   padded(p, width), padded(m, width)]
                  for cands, scores, p, m in zip(candidates, lm_scores, positives, masked, strict=True)]
        vectors = searcher.vectors(chunks.ids)
    dataset = Dataset.from_dict({"query": [r.question.question for r in resolved], "label": labels})
    return dataset, torch.from_numpy(np.ascontiguousarray(vectors))


def before_after(ws: Workspace, searcher: Searcher, chunks: IndexChunks, data: str | Path,
                 eval_data: str | Path | None, out: Path, result: TrainResult, k: int = 10) -> None:
    """Dense retrieval on held-out questions with the base and the trained query encoder (when any are given)."""
    from ragtune.config import SearchConfig

    source = eval_data or data
    try:
        held_out = [r for r in (chunks.resolve(q) for q in load_questions(source, split="eval")) if r is not None]
    except RetrieverDataError:
        held_out = []
    result.extra["eval_questions"] = len(held_out)
    if not held_out:
        return
    result.before = retrieval_scores(searcher, chunks, held_out, k)
    trained = Searcher(ws, SearchConfig(retriever=str(out)))
    result.after = retrieval_scores(trained, chunks, held_out, k)


def write_manifest(ws: Workspace, stage: str, data: str | Path, config: dict[str, Any], result: TrainResult) -> None:
    from ragtune.hashing import file_hash

    ws.write_manifest(Manifest(
        stage=stage,
        inputs={str(Path(data).resolve()): file_hash(Path(data))},
        config=config,
        counts={"examples": result.examples, "steps": result.steps, **result.counts},
        timings={"prepare_s": result.prepare_seconds, "train_s": result.train_seconds},
        extra={"out": str(result.out), "peak_rss_mb": result.peak_rss_mb, "losses": result.losses[-50:],
               "before": result.before, "after": result.after, **result.extra},
    ))
