"""Run one system (model + adapter + setting) over a question set and score it.

Settings follow the RAFT paper:
- `closed-book`: the question alone (what the model memorised);
- `oracle`: the gold documents plus K distractors, in a seeded random order (K = 0..9 gives the robustness curve);
- `retrieved`: the top-k hits of the workspace index (the open, end-to-end setting), with retrieval scored too.

Generation is greedy with a fixed seed, and prompts are grouped into length-sorted batches before they reach the
backend: with left padding, a batch costs as much as its longest prompt times its size, so mixing a 200-token and a
900-token prompt wastes most of the batch. Every finished batch is appended to predictions.jsonl, so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune import metrics
from ragtune.datasets import QAItem
from ragtune.eval.settings import EvalSettings as EvalSettings  # the settings, importable where they always were
from ragtune.eval.settings import SystemSpec as SystemSpec
from ragtune.eval.settings import parse_distractors as parse_distractors
from ragtune.hashing import file_hash, short_id
from ragtune.llm.base import LLM, GenerationConfig, Message
from ragtune.prompts import build_messages
from ragtune.records import ContextDoc
from ragtune.workspace import Manifest, Workspace, write_json_atomic

ProgressCallback = Callable[[int, int], None]  # (questions done, questions total)


@dataclass
class RunResult:
    """Scores and per-question records of one run (one system, one setting, one K)."""

    scores: dict[str, Any]
    records: list[dict[str, Any]]
    settings: EvalSettings
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# What the generator is shown


def _rng(seed: int, item_id: str, purpose: str) -> random.Random:
    # One RNG per question: the draw for a question does not depend on which other questions are in the run.
    return random.Random(int(short_id(str(seed), item_id, purpose), 16))


def distractor_pool(items: Sequence[QAItem]) -> list[ContextDoc]:
    """Every document of the question set, for data sets whose questions have fewer own distractors than K."""
    seen: set[str] = set()
    pool = []
    for item in sorted(items, key=lambda it: it.id):
        for doc in item.gold_docs + item.distractor_docs:
            if doc.text not in seen:
                seen.add(doc.text)
                pool.append(doc)
    return pool


def oracle_documents(item: QAItem, k: int, seed: int = 0, pool: Sequence[ContextDoc] = ()) -> list[ContextDoc]:
    """The gold documents plus `k` distractors, shuffled.

    Distractors come from the question's own non-gold documents first (HotpotQA: the eight other paragraphs), then
    from `pool`. The candidates are permuted once per question and the first k taken, so the distractors at K are a
    subset of those at K+1: the robustness curve changes one document at a time.
    """
    rng = _rng(seed, item.id, "distractors")
    own = list(item.distractor_docs)
    rng.shuffle(own)
    chosen = own[:k]
    if len(chosen) < k and pool:
        exclude = {d.text for d in item.gold_docs + chosen}
        # Sample indices lazily: the pool may be large, and a full shuffle per question would dominate small runs.
        order_rng = _rng(seed, item.id, "pool")
        tries = 0
        while len(chosen) < k and tries < 20 * k + len(pool):
            doc = pool[order_rng.randrange(len(pool))]
            tries += 1
            if doc.text not in exclude:
                exclude.add(doc.text)
                chosen.append(doc)
    shown = list(item.gold_docs) + chosen
    _rng(seed, item.id, f"order-{k}").shuffle(shown)
    return shown


def _is_gold(doc_id: str, text: str, gold: Sequence[ContextDoc]) -> bool:
    # An index built from other files gives other doc ids; a chunk that lies inside a gold document still counts.
    if any(doc_id == g.doc_id for g in gold):
        return True
    key = " ".join(text.split())
    return len(key) > 20 and any(key in " ".join(g.text.split()) for g in gold)


def retrieved_documents(item: QAItem, searcher: Any, k: int, mode: str) -> tuple[list[ContextDoc], dict[str, float]]:
    """Top-k hits as documents, and recall@k / MRR / nDCG@k against the item's gold documents."""
    hits = searcher.search(item.question, k=k, mode=mode)
    docs = [ContextDoc(doc_id=h.doc_id, title=h.title, text=h.text) for h in hits]
    if not item.gold_docs:
        return docs, {}
    # Map each hit to a gold id when it is one, so chunks of one gold document count once.
    ranked = []
    for doc in docs:
        match = next((g.doc_id for g in item.gold_docs if _is_gold(doc.doc_id, doc.text, [g])), None)
        ranked.append(match or f"other:{doc.doc_id}")
    gold_ids = [g.doc_id for g in item.gold_docs]
    scores = {
        f"recall@{k}": metrics.recall_at_k(ranked, gold_ids, k),
        "mrr": metrics.mrr(ranked, gold_ids, k),
        f"ndcg@{k}": metrics.ndcg_at_k(ranked, gold_ids, k),
    }
    return docs, scores


# ---------------------------------------------------------------------------------------------------------------------
# Generation


def prompt_length(llm: LLM, messages: list[Message]) -> int:
    """Tokens of the rendered prompt when the backend exposes its tokenizer, else characters (a fine proxy)."""
    tokenizer = getattr(llm, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        try:
            ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)
        except Exception:  # noqa: BLE001 - any template problem only costs us the better sort key
            pass
    return sum(len(m["content"]) for m in messages)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (padding waste is minimal, memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # an API-only backend needs no torch
        pass


# ---------------------------------------------------------------------------------------------------------------------
# One run


def _score_record(item: QAItem, shown: list[ContextDoc], generation: str) -> dict[str, Any]:
    prediction = metrics.extract_answer(generation)
    gold_texts = [d.text for d in item.gold_docs]
    shown_texts = [d.text for d in shown]
    oracle_shown = any(_is_gold(d.doc_id, d.text, item.gold_docs) for d in shown) if item.gold_docs else False
    quotes = metrics.quote_stats(generation, shown_texts, gold_texts if oracle_shown else [])
    return {
        "prediction": prediction,
        "em": metrics.exact_match(prediction, item.answers, item.answerable),
        "f1": metrics.f1_score(prediction, item.answers, item.answerable),
        "abstained": metrics.is_abstention(prediction),
        "oracle_shown": oracle_shown,
        **quotes,
    }


def _degeneracy(
    generation: str, completion_tokens: int | None, finish_reason: str | None, max_new_tokens: int, prompt: str
) -> dict[str, Any]:
    """Per-answer flags of degenerate output (see `metrics.degeneracy_rates`): a loop to the token limit, and
    whether `<ANSWER>:` was reached and asked for (only the chain-of-thought prompt asks for it).

    The token count is the backend's own (`completion_tokens`, up to EOS) with its finish reason, so "ran to the
    limit" is measured, not guessed from the text's length."""
    return {
        "looped": metrics.is_looping(generation, completion_tokens, max_new_tokens, finish_reason),
        "answer_tag": metrics.has_answer_tag(generation),
        "answer_tag_expected": prompt == "cot",
        "hit_token_limit": metrics.hit_token_limit(completion_tokens, max_new_tokens, finish_reason),
    }


def _flag_degeneracy(record: dict[str, Any], settings: EvalSettings) -> None:
    """Add the degeneracy flags to a record kept from before they existed (a resumed run is reported like a new one)."""
    if "looped" not in record:
        record.update(
            _degeneracy(record.get("generation") or "", record.get("completion_tokens"),
                        record.get("finish_reason"), settings.new_tokens, settings.prompt)
        )


def _read_done(path: Path, signature: str) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that question is simply generated again
                continue
            if record.get("signature") == signature:
                done[record["id"]] = record
    return done


def evaluate(
    items: Sequence[QAItem],
    llm: LLM,
    settings: EvalSettings,
    run_dir: str | Path | None = None,
    searcher: Any = None,
    system: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    pool: Sequence[ContextDoc] | None = None,
    sort_by_length: bool = True,
) -> RunResult:
    """Generate answers for `items` under `settings` and score them.

    With `run_dir`, records are appended to `run_dir/predictions.jsonl` batch by batch and reused on the next call
    with the same system and settings (resume); scores.json is written at the end. `system` describes the model
    (name, model, adapter) and is part of the resume signature, so a different adapter never reuses answers.
    `sort_by_length=False` keeps id order in batches (the naive baseline of the throughput benchmark).
    """
    system = dict(system or {})
    if settings.setting == "retrieved" and searcher is None:
        raise ValueError("the retrieved setting needs a searcher (an indexed workspace)")
    allow_unanswerable = settings.allow_unanswerable
    if allow_unanswerable is None:
        allow_unanswerable = any(not it.answerable for it in items)
    signature = short_id(json.dumps({"system": system, "settings": settings.identity()}, sort_keys=True))
    path = Path(run_dir) / "predictions.jsonl" if run_dir is not None else None
    done = _read_done(path, signature) if path is not None else {}
    for record in done.values():
        _flag_degeneracy(record, settings)
    if pool is None and settings.setting == "oracle" and settings.distractors:
        pool = distractor_pool(items)

    # Build every prompt first: retrieval and distractor draws are cheap next to generation.
    todo: list[tuple[QAItem, list[ContextDoc], dict[str, float], list[Message]]] = []
    for item in items:
        if item.id in done:
            continue
        retrieval: dict[str, float] = {}
        if settings.setting == "closed-book":
            shown: list[ContextDoc] = []
        elif settings.setting == "oracle":
            shown = oracle_documents(item, settings.distractors, settings.seed, pool or ())
        else:
            shown, retrieval = retrieved_documents(item, searcher, settings.k, settings.retrieval_mode)
        messages = build_messages(item.question, shown, settings.prompt, allow_unanswerable)
        todo.append((item, shown, retrieval, messages))

    config = GenerationConfig(max_new_tokens=settings.new_tokens, temperature=0.0, seed=settings.seed)
    lengths = [prompt_length(llm, t[3]) for t in todo]
    if sort_by_length:
        batches = length_sorted_batches(lengths, settings.batch_size)
    else:
        size = settings.batch_size
        batches = [list(range(i, min(i + size, len(todo)))) for i in range(0, len(todo), size)]
    total = len(items)
    finished = len(items) - len(todo)
    if progress:
        progress(finished, total)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    _seed_everything(settings.seed)
    started = time.perf_counter()
    for batch in batches:
        t0 = time.perf_counter()
        generations = llm.generate([todo[i][3] for i in batch], config, batch_size=len(batch))
        seconds = (time.perf_counter() - t0) / len(batch)
        lines = []
        for i, gen in zip(batch, generations, strict=True):
            item, shown, retrieval, _messages = todo[i]
            record = {
                "id": item.id,
                "question": item.question,
                "answers": item.answers,
                "answerable": item.answerable,
                "setting": settings.setting,
                "distractors": settings.distractors if settings.setting == "oracle" else None,
                "shown": [{"doc_id": d.doc_id, "title": d.title} for d in shown],
                "generation": gen.text,
                **_score_record(item, shown, gen.text),
                "retrieval": retrieval,
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "finish_reason": gen.finish_reason,
                **_degeneracy(gen.text, gen.completion_tokens, gen.finish_reason, settings.new_tokens, settings.prompt),
                "seconds": seconds,
                "batch_size": len(batch),
                "signature": signature,
            }
            done[item.id] = record
            lines.append(json.dumps(record, ensure_ascii=False))
        if path is not None:
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        finished += len(batch)
        if progress:
            progress(finished, total)
    wall = time.perf_counter() - started

    records = [done[it.id] for it in items if it.id in done]
    resumed = len(items) - len(todo)
    # Throughput from this call's wall clock when everything was generated now; from the recorded per-question
    # times when part of the run was resumed (or all of it: then this call's clock measured nothing).
    scores = metrics.aggregate(records, wall_seconds=wall if not resumed else None)
    result = RunResult(scores=scores, records=records, settings=settings, run_dir=Path(run_dir) if run_dir else None)
    result.extra = {"system": system, "signature": signature, "resumed": resumed}
    if run_dir is not None:
        write_run_files(result)
    return result


def write_run_files(result: RunResult) -> None:
    """scores.json and a clean predictions.jsonl (the resume log rewritten without stale or duplicate lines)."""
    assert result.run_dir is not None
    run_dir = result.run_dir
    tmp = run_dir / "predictions.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in result.records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(run_dir / "predictions.jsonl")
    write_json_atomic(
        run_dir / "scores.json",
        {"system": result.extra.get("system", {}), "settings": result.settings.model_dump(), "scores": result.scores},
    )


# ---------------------------------------------------------------------------------------------------------------------
# Sweeps, run names, manifests


def evaluate_sweep(
    items: Sequence[QAItem],
    llm: LLM,
    settings: EvalSettings,
    ks: Sequence[int],
    run_dir: str | Path | None = None,
    searcher: Any = None,
    system: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[int, RunResult]:
    """The oracle setting at each K (one sub-run `k<K>/` per value): the RAFT robustness curve."""
    pool = distractor_pool(items)
    results: dict[int, RunResult] = {}
    total = len(items) * len(ks)
    for n, k in enumerate(ks):
        sub = EvalSettings.model_validate({**settings.model_dump(), "distractors": k})
        sub_dir = Path(run_dir) / f"k{k}" if run_dir is not None else None

        def relay(done: int, _total: int, offset: int = n * len(items)) -> None:
            if progress:
                progress(offset + done, total)

        results[k] = evaluate(items, llm, sub, sub_dir, searcher, system, relay, pool=pool)
    return results


def sweep_summary(results: dict[int, RunResult]) -> dict[str, Any]:
    """Scores of a sweep: per K, and the mean over K of EM and F1 (the area under the robustness curve)."""
    by_k = {str(k): r.scores for k, r in sorted(results.items())}
    f1s = [r.scores["f1"] for r in results.values() if r.scores.get("f1") is not None]
    ems = [r.scores["em"] for r in results.values() if r.scores.get("em") is not None]
    every = [rec for r in results.values() for rec in r.records]
    return {
        "em": sum(ems) / len(ems) if ems else None,
        "f1": sum(f1s) / len(f1s) if f1s else None,
        "n": max((r.scores["n"] for r in results.values()), default=0),
        # The interval of the mean over K (each question at its mean F1 over K), and degenerate output over every K.
        **metrics.f1_interval(every),
        **metrics.degeneracy_rates(every),
        "distractors": sorted(results),
        "by_distractors": by_k,
    }


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")[:80] or "run"


def default_run_name(
    model: str,
    adapter: str | None,
    data_format: str,
    settings: EvalSettings,
    ks: Sequence[int],
    split: str,
    limit: int | None,
) -> str:
    """A readable, stable name from what defines the run, so the same command writes to the same folder."""
    parts = [Path(model).name or model]
    if adapter:
        parts.append(Path(adapter.rstrip("/")).name)
    parts += [data_format, settings.setting]
    if settings.setting == "oracle":
        parts.append("k" + (str(ks[0]) if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"))
    elif settings.setting == "retrieved":
        parts.append(f"top{settings.k}-{settings.retrieval_mode}")
        if settings.search:
            parts.append("search-" + short_id(json.dumps(settings.search, sort_keys=True))[:8])
    parts += [settings.prompt, split]
    if limit is not None:
        parts.append(f"n{limit}")
    return slug("-".join(parts))


def write_manifest(
    workspace: Workspace,
    run_name: str,
    run_dir: Path,
    data_path: str | Path,
    system: dict[str, Any],
    scores: dict[str, Any],
    n_items: int,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The workspace manifest of an eval run (inputs' hashes, config, counts, timings), also copied into the run."""

    inputs = {str(Path(data_path).resolve()): file_hash(Path(data_path))}
    adapter = system.get("adapter")
    if adapter and (Path(adapter) / "adapter_model.safetensors").exists():
        inputs[str(Path(adapter).resolve())] = file_hash(Path(adapter) / "adapter_model.safetensors")
    manifest = Manifest(
        stage=f"eval-{run_name}",
        inputs=inputs,
        config={"system": system},
        counts={"questions": n_items},
        timings={"total_seconds": seconds},
        extra={"scores": {k: v for k, v in scores.items() if k in ("em", "f1", "n")}, **(extra or {})},
    )
    path = workspace.write_manifest(manifest)
    write_json_atomic(run_dir / "manifest.json", manifest.to_dict())
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Systems (what `ragtune eval` and `ragtune compare` run)


@dataclass
class SystemRun:
    """What running a system produced: headline scores, the per-K curve of a sweep, and every record."""

    spec: SystemSpec
    scores: dict[str, Any]
    records: list[dict[str, Any]]  # the headline run's records (the largest K of a sweep)
    curve: dict[int, dict[str, Any]]
    all_records: list[dict[str, Any]]
    run_dir: Path
    seconds: float


def data_key(path: str | Path) -> str:
    """A cheap identity of a data file (path, size, mtime): hashing a 50 MB file on every run is not needed."""
    p = Path(path).resolve()
    stat = p.stat()
    return short_id(str(p), str(stat.st_size), str(stat.st_mtime_ns))


def open_searcher(workspace: Workspace, ingest_path: str | Path | None = None, data_format: str | None = None,
                  search: dict[str, Any] | None = None):
    """The workspace's searcher, configured by `search` (SearchConfig fields); with `ingest_path`, the data file's
    documents are (incrementally) indexed first."""
    if ingest_path is not None:
        from ragtune.index.ingest import ingest

        if data_format not in ("hotpotqa", "squad", "nq"):
            raise ValueError("--ingest indexes HotpotQA, SQuAD or NQ files; ingest other corpora with `ragtune ingest`")
        ingest([ingest_path], workspace)
    from ragtune.config import SearchConfig
    from ragtune.retrieve.search import Searcher

    return Searcher(workspace, SearchConfig.model_validate(search or {}))


def adapter_fingerprint(adapter: str | None) -> str:
    """The hash of an adapter's weights: retraining into the same folder must not reuse the old answers."""
    if not adapter:
        return ""
    weights = Path(adapter) / "adapter_model.safetensors"
    return file_hash(weights) if weights.exists() else ""


def system_specs(entries: Sequence[Any], defaults: dict[str, Any] | None = None) -> list[SystemSpec]:
    """The systems of a `compare` YAML (its `systems:` list, each entry over `defaults:`), validated: every entry a
    mapping, every field known and in range, names unique. Raises ValueError naming the system at fault; the CLI and
    `ragtune run` prefix it with where the list came from."""
    specs = []
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"system #{i} is not a mapping")
        data = {**(defaults or {}), **entry}
        data.setdefault("name", f"system{i}")
        try:
            spec = SystemSpec.from_dict(data)
            spec.settings(1)
            spec.ks()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"system {data['name']!r}: {exc}") from None
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique (got {', '.join(names)})")
    return specs


def run_system(
    spec: SystemSpec,
    items: Sequence[QAItem],
    workspace: Workspace,
    run_dir: Path,
    batch_size: int = 8,
    searcher: Any = None,
    progress: ProgressCallback | None = None,
    llm: LLM | None = None,
    data_key: str = "",
) -> SystemRun:
    """Load the system's generator and evaluate it (one run, or a K sweep in the oracle setting).

    `data_key` identifies the data file (see `data_key`); it joins the resume signature so that answers to another
    file's questions with the same ids are never reused.
    """
    if llm is None:
        from ragtune.llm import load_llm

        # a LoRA is folded into the weights for inference: same answers, one matmul per layer instead of three
        llm = load_llm(spec.model, adapter=spec.adapter, dtype=spec.dtype, merge_adapter=True, engine=spec.engine)
    settings = spec.settings(batch_size)
    if settings.setting == "retrieved" and searcher is None:
        searcher = open_searcher(workspace, search=settings.search)
    system = {"model": spec.model or "", "adapter": spec.adapter or "", "data": data_key,
              "adapter_weights": adapter_fingerprint(spec.adapter)}
    if spec.explicit_dtype:
        system["dtype"] = spec.explicit_dtype
    if spec.engine and spec.engine != "transformers":
        system["engine"] = spec.engine
    ks = spec.ks()
    started = time.perf_counter()
    if len(ks) > 1:
        results = evaluate_sweep(items, llm, settings, ks, run_dir, searcher, system, progress)
        summary = sweep_summary(results)
        headline = results[ks[-1]]
        curve = {k: r.scores for k, r in results.items()}
        all_records = [rec for k in ks for rec in results[k].records]
        write_json_atomic(run_dir / "scores.json", {"system": spec.describe(), "scores": summary})
        scores = summary
    else:
        result = evaluate(items, llm, settings, run_dir, searcher, system, progress)
        headline, scores, all_records = result, result.scores, result.records
        curve = {ks[0]: result.scores} if settings.setting == "oracle" else {}
    return SystemRun(spec, scores, headline.records, curve, all_records, run_dir, time.perf_counter() - started)
