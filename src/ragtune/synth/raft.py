"""RAFT synthesis from the workspace's chunks: the teacher writes questions per chunk, then a quoted chain-of-thought
answer per question; each example gets its oracle plus k distractors, and the oracle is kept with probability P.

Work runs in waves of `concurrency` chunks: one batched (or concurrent, for a server) call writes the questions of the
whole wave, one more writes all answers, and only the invalid ones are retried, with the teacher told what was wrong.
A wave's chunk groups are appended to `synth/raft.jsonl` as they finish (see `store.py`); the randomness of a chunk
comes from (seed, chunk id) only, so an interrupted run resumed gives exactly the uninterrupted run's examples.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.hashing import short_id
from ragtune.llm.base import LLM, GenerationConfig, Message
from ragtune.records import Chunk
from ragtune.synth import prompts
from ragtune.synth.distractors import DistractorPool, Exclusion, HardNegativeMiner, assemble, pick_distractors
from ragtune.synth.records import ContextDoc, Group, RaftExample
from ragtune.synth.splits import split_of
from ragtune.synth.store import GroupFile
from ragtune.synth.validate import CotCheck, check_cot, parse_questions, question_problem
from ragtune.workspace import Manifest, Workspace

STAGE = "synth-raft"


class SynthConfigError(ValueError):
    """Bad settings, or settings that conflict with the run already in the output file."""


@dataclass
class RaftConfig:
    """Settings of `ragtune synth raft`. Fields in `FINGERPRINT` must match to resume into an existing file."""

    questions_per_chunk: int = 3
    distractors: int = 3
    p_oracle: float = 0.8
    hard_negatives: bool = False
    search_mode: str = "hybrid"
    limit: int | None = None
    seed: int = 0
    concurrency: int = 8
    retries: int = 1
    teacher_context: str = "all"  # "all": the teacher sees oracle + distractors, as the student will; "oracle"
    min_quotes: int = 1
    question_tokens: int = 160
    answer_tokens: int = 384
    temperature: float = 0.0
    min_chunk_words: int = 12

    FINGERPRINT = (
        "questions_per_chunk",
        "distractors",
        "p_oracle",
        "hard_negatives",
        "search_mode",
        "seed",
        "retries",
        "teacher_context",
        "min_quotes",
        "question_tokens",
        "answer_tokens",
        "temperature",
        "min_chunk_words",
    )

    def check(self) -> None:
        if not 0.0 <= self.p_oracle <= 1.0:
            raise SynthConfigError(f"--p-oracle must be between 0 and 1, got {self.p_oracle}")
        if self.distractors < 0:
            raise SynthConfigError("--distractors must be >= 0")
        if self.questions_per_chunk < 1:
            raise SynthConfigError("--questions-per-chunk must be >= 1")
        if self.concurrency < 1:
            raise SynthConfigError("--concurrency must be >= 1")
        if self.teacher_context not in ("all", "oracle"):
            raise SynthConfigError("--teacher-context must be 'all' or 'oracle'")
        if self.limit is not None and self.limit < 1:
            raise SynthConfigError("--limit must be >= 1")


@dataclass
class SynthSummary:
    """What a run did, for the CLI's summary and the manifest."""

    out: Path
    groups_total: int = 0
    groups_done_before: int = 0
    groups_written: int = 0
    groups_failed: int = 0
    examples_written: int = 0
    examples_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


# ---- teacher calls shared by every builder ---------------------------------------------------------------------------


def answer_with_retries(
    teacher: LLM,
    conversations: list[list[Message]],
    oracles: list[list[str]],
    config: GenerationConfig,
    retries: int,
    batch_size: int,
    min_quotes: int = 1,
    accept: Callable[[int, CotCheck], CotCheck] | None = None,
) -> tuple[list[CotCheck], list[int]]:
    """Ask the teacher for every CoT answer at once, then re-ask only the invalid ones, up to `retries` times.

    Returns the last verdict and the number of attempts per conversation. `accept` may tighten a verdict (from-qa
    checks the teacher's answer against the gold label).
    """
    checks: list[CotCheck] = [CotCheck(False, "not generated")] * len(conversations)
    attempts = [0] * len(conversations)
    current = list(conversations)
    todo = list(range(len(conversations)))
    for attempt in range(retries + 1):
        if not todo:
            break
        outs = teacher.generate([current[i] for i in todo], config, batch_size=batch_size)
        still: list[int] = []
        for i, out in zip(todo, outs, strict=True):
            check = check_cot(out.text, oracles[i], min_quotes=min_quotes)
            if accept is not None and check.valid:
                check = accept(i, check)
            checks[i] = check
            attempts[i] += 1
            if not check.valid and attempt < retries:
                current[i] = prompts.retry_messages(current[i], out.text, check.reason)
                still.append(i)
        todo = still
    return checks, attempts


def answer_counts(check: CotCheck, attempts: int) -> Counter:
    """The per-answer numbers every group records: attempts, validity, quotes checked and found, why dropped."""
    counter: Counter = Counter()
    counter["answers_checked"] += attempts
    counter["answer_retries"] += max(0, attempts - 1)
    counter["answers_valid" if check.valid else f"dropped: {check.reason}"] += 1
    counter["quotes"] += len(check.quotes)
    counter["quotes_in_oracle"] += check.quotes_ok
    return counter


def _progress(enabled: bool, total: int, done: int, label: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[examples]} examples"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
    task = progress.add_task(label, total=total, completed=done, examples=0)
    return progress, task


def settings_path(out: Path) -> Path:
    """The settings an output file was produced with, kept beside it (one per file, whatever the manifest says)."""
    return out.with_name(out.name + ".settings.json")


def check_resume(ws: Workspace, stage: str, out: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Refuse to append to a file produced with different settings (the result would mix two runs); then record
    this run's settings beside the file."""
    import json

    from ragtune.workspace import write_json_atomic

    sidecar = settings_path(out)
    current = json.loads(json.dumps(fingerprint, default=str))
    if not overwrite and out.exists() and out.stat().st_size > 0 and sidecar.exists():
        before = json.loads(sidecar.read_text(encoding="utf-8"))
        if before != current:
            changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
            raise SynthConfigError(
                f"{out} was produced with different settings ({', '.join(changed)}); pass --overwrite to start "
                "again or --out to write elsewhere."
            )
    write_json_atomic(sidecar, current)


def start_from_raft(ws: Workspace, stage: str, out: Path, fingerprint: dict[str, Any], source: Path, overwrite: bool,
                    examples: Sequence[RaftExample]) -> tuple[Manifest, dict[str, list[RaftExample]]]:
    """Shared start of the builders that read a RAFT file (pairs, preferences): refuse a resume under other
    settings, record the manifest, and group the examples by the chunk or record they came from."""
    check_resume(ws, stage, out, fingerprint, overwrite)
    manifest = Manifest(stage=stage, config=fingerprint, inputs={"raft": str(source)},
                        extra={"fingerprint": fingerprint, "out": str(out)})
    ws.write_manifest(manifest)
    by_group: dict[str, list[RaftExample]] = {}
    for e in examples:
        by_group.setdefault(e.group_id, []).append(e)
    return manifest, by_group

def chunk_docs(chunks: Sequence[Chunk]) -> tuple[list[ContextDoc], dict[str, tuple[str, int, int]]]:
    docs = [ContextDoc(doc_id=c.chunk_id, text=c.text, title=c.title) for c in chunks]
    spans = {c.chunk_id: (c.doc_id, c.start, c.end) for c in chunks}
    return docs, spans


def _teacher_docs(oracle: ContextDoc, documents: list[ContextDoc], k: int) -> list[ContextDoc]:
    """What the teacher sees in "all" mode: the oracle among the example's distractors (k of them), in a fixed order
    that does not give the oracle's position away."""
    distractors = [d for d in documents if d.doc_id != oracle.doc_id][:k]
    docs = [oracle.model_copy(update={"is_oracle": True}), *distractors]
    return sorted(docs, key=lambda d: short_id("teacher-order", d.doc_id))


def synthesize_raft(
    workspace: Workspace | str | Path,
    teacher: LLM,
    config: RaftConfig | None = None,
    chunks: Sequence[Chunk] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    searcher: Any = None,
) -> SynthSummary:
    """Write RAFT examples for the workspace's chunks (or `chunks`) to `out` (default WORKSPACE/synth/raft.jsonl)."""
    config = config or RaftConfig()
    config.check()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ws.ensure()
    out = Path(out) if out else ws.root / "synth" / "raft.jsonl"
    started = time.perf_counter()
    if chunks is None:
        from ragtune.index.store import ChunkStore

        store = ChunkStore(ws)
        if not store.exists():
            raise SynthConfigError(f"No index in workspace {ws.root}: run `ragtune ingest PATH --workspace {ws.root}`.")
        chunks = store.read_chunks()
    all_chunks = sorted(chunks, key=lambda c: (c.source, c.doc_id, c.start, c.chunk_id))
    eligible = [c for c in all_chunks if len(c.text.split()) >= config.min_chunk_words]
    if config.limit is not None and len(eligible) > config.limit:
        # a spread over the corpus, not its first files; the choice depends on the seed only
        chosen = set(
            sorted((c.chunk_id for c in eligible), key=lambda cid: short_id(str(config.seed), cid))[: config.limit]
        )
        eligible = [c for c in eligible if c.chunk_id in chosen]
    if not eligible:
        raise SynthConfigError(f"No chunk with at least {config.min_chunk_words} words in {ws.root}.")

    fingerprint = {k: getattr(config, k) for k in RaftConfig.FINGERPRINT} | {"teacher": teacher.name}
    check_resume(ws, STAGE, out, fingerprint, overwrite)
    pool_docs, spans = chunk_docs(all_chunks)
    pool = DistractorPool(pool_docs, spans)
    miner = None
    if config.hard_negatives:
        if searcher is None:
            from ragtune.index.search import Searcher

            searcher = Searcher(ws)
        miner = HardNegativeMiner(searcher, mode=config.search_mode)

    manifest = Manifest(
        stage=STAGE,
        config=asdict(config) | {"teacher": teacher.name},
        inputs={"chunks": short_id(*sorted(c.chunk_id for c in eligible))},
        extra={"fingerprint": fingerprint, "out": str(out), "status": "running"},
    )
    ws.write_manifest(manifest)
    summary = SynthSummary(out=out, groups_total=len(eligible))
    q_config = GenerationConfig(max_new_tokens=config.question_tokens, temperature=config.temperature, seed=config.seed)
    a_config = GenerationConfig(max_new_tokens=config.answer_tokens, temperature=config.temperature, seed=config.seed)
    batch_sensitive = getattr(teacher, "batch_sensitive", False)
    with GroupFile(out, overwrite=overwrite) as store_file:
        summary.groups_done_before = sum(c.chunk_id in store_file.done for c in eligible)
        bar, task = _progress(progress, len(eligible), summary.groups_done_before, "synth raft")
        with bar:
            run_waves(
                eligible, lambda c: c.chunk_id, config.concurrency, batch_sensitive,
                lambda work: _run_wave(work, teacher, config, pool, miner, q_config, a_config),
                store_file, summary, bar, task,
            )
        summary.examples_total = store_file.examples
        summary.counts = dict(store_file.counts)
    summary.usage = teacher.usage.to_dict()
    summary.seconds = time.perf_counter() - started
    write_final_manifest(ws, manifest, summary, {"chunks": len(eligible)})
    return summary


def write_final_manifest(ws: Workspace, manifest: Manifest, summary: SynthSummary, inputs: dict[str, int]) -> None:
    """Counts, drops, usage and status of a finished (or partly failed) synthesis run; shared by raft and from-qa."""
    manifest.counts = {
        **inputs,
        "groups_written": summary.groups_written,
        "groups_failed": summary.groups_failed,
        "examples": summary.examples_total,
        **{k: v for k, v in summary.counts.items() if not k.startswith("dropped")},
    }
    manifest.timings = {"total": summary.seconds}
    manifest.extra |= {
        "status": "complete" if summary.groups_failed == 0 else "partial",
        "dropped": {k: v for k, v in summary.counts.items() if k.startswith("dropped")},
        "usage": summary.usage,
        "errors": summary.errors[:20],
    }
    ws.write_manifest(manifest)


def run_waves(items: Sequence[Any], item_id: Callable[[Any], str], wave_size: int, batch_sensitive: bool,
              make_groups: Callable[[list[Any]], list[Group]], store_file: GroupFile, summary: SynthSummary,
              bar: Any, task: Any) -> None:
    """Process items in fixed waves, appending each finished group once; shared by `raft` and `from-qa`.

    A wave whose teacher calls fail is counted and skipped (a re-run retries it); a 401 stops everything. A local
    batched model's numerics depend on the batch, so with `batch_sensitive` whole waves are recomputed on resume and
    a resumed run sees the same batches as an uninterrupted one.
    """
    for start in range(0, len(items), wave_size):
        wave = list(items[start : start + wave_size])
        pending = [x for x in wave if item_id(x) not in store_file.done]
        if not pending:
            continue
        try:
            groups = make_groups(wave if batch_sensitive else pending)
        except Exception as exc:
            from ragtune.llm.openai_backend import AuthenticationError

            if isinstance(exc, AuthenticationError):
                raise
            summary.groups_failed += len(pending)
            summary.errors.append(f"{type(exc).__name__}: {exc}")
            bar.update(task, advance=len(pending))
            continue
        for group in groups:
            if group.group_id in store_file.done:
                continue
            store_file.append(group)
            summary.groups_written += 1
            summary.examples_written += len(group.examples)
            bar.update(task, advance=1, examples=summary.examples_written)


def _run_wave(
    chunks: Sequence[Chunk],
    teacher: LLM,
    config: RaftConfig,
    pool: DistractorPool,
    miner: HardNegativeMiner | None,
    q_config: GenerationConfig,
    a_config: GenerationConfig,
) -> list[Group]:
    n = config.questions_per_chunk
    stats: dict[str, Counter] = {c.chunk_id: Counter() for c in chunks}
    # 1. questions, with one retry for chunks that got fewer than n usable ones
    convs = [prompts.question_messages(c.text, n, c.title) for c in chunks]
    outs = teacher.generate(convs, q_config, batch_size=config.concurrency)
    questions: list[list[str]] = []
    for c, out in zip(chunks, outs, strict=True):
        questions.append(_usable_questions(out.text, c, n, stats[c.chunk_id]))
    short = [i for i, qs in enumerate(questions) if len(qs) < n]
    if short and config.retries > 0:
        retry = [
            convs[i]
            + [
                {"role": "assistant", "content": outs[i].text},
                {
                    "role": "user",
                    "content": f"Write {n} questions about the text, numbered, one per "
                    "line, each ending with a question mark, in your own words.",
                },
            ]
            for i in short
        ]
        for i, out in zip(short, teacher.generate(retry, q_config, batch_size=config.concurrency), strict=True):
            c = chunks[i]
            stats[c.chunk_id]["question_retries"] += 1
            extra = _usable_questions(out.text, c, n, stats[c.chunk_id])
            seen = {q.lower() for q in questions[i]}
            questions[i] += [q for q in extra if q.lower() not in seen][: n - len(questions[i])]

    # 2. per question: distractors, P, shuffle — all from the chunk's own RNG, in question order
    jobs: list[tuple[int, str, list[ContextDoc], bool]] = []
    for ci, c in enumerate(chunks):
        rng = random.Random(f"{config.seed}:{c.chunk_id}")
        oracle = ContextDoc(doc_id=c.chunk_id, text=c.text, title=c.title, is_oracle=True)
        for q in questions[ci]:
            exclude = Exclusion([oracle], [(c.doc_id, c.start, c.end)])
            distractors = pick_distractors(rng, config.distractors + 1, exclude, pool, miner=miner, query=q)
            docs, kept = assemble(rng, [oracle], distractors, config.distractors, config.p_oracle)
            jobs.append((ci, q, docs, kept))
            stats[c.chunk_id]["questions"] += 1
            if len(distractors) < config.distractors + 1:
                stats[c.chunk_id]["short_of_distractors"] += 1

    # 3. CoT answers, validated against the oracle, invalid ones retried
    conversations = []
    for ci, q, docs, _kept in jobs:
        c = chunks[ci]
        oracle = ContextDoc(doc_id=c.chunk_id, text=c.text, title=c.title, is_oracle=True)
        teacher_docs = (
            [oracle] if config.teacher_context == "oracle" else _teacher_docs(oracle, docs, config.distractors)
        )
        conversations.append(prompts.cot_messages(teacher_docs, q))
    checks, attempts = answer_with_retries(
        teacher,
        conversations,
        [
            [prompts.shown_text(ContextDoc(doc_id=chunks[ci].chunk_id, text=chunks[ci].text, title=chunks[ci].title))]
            for ci, *_ in jobs
        ],
        a_config,
        config.retries,
        config.concurrency,
        config.min_quotes,
    )
    for (ci, *_rest), check, n_attempts in zip(jobs, checks, attempts, strict=True):
        stats[chunks[ci].chunk_id].update(answer_counts(check, n_attempts))

    groups: list[Group] = []
    for ci, c in enumerate(chunks):
        examples = []
        for (cj, q, docs, kept), check in zip(jobs, checks, strict=True):
            if cj != ci or not check.valid:
                continue
            examples.append(
                RaftExample(
                    id=short_id(c.chunk_id, q),
                    group_id=c.chunk_id,
                    question=q,
                    documents=docs,
                    oracle_ids=[c.chunk_id],
                    oracle_kept=kept,
                    dropped_oracles=[]
                    if kept
                    else [ContextDoc(doc_id=c.chunk_id, text=c.text, title=c.title, is_oracle=True)],
                    cot_answer=check.cot_answer,
                    answer=check.answer,
                    quotes=check.quotes,
                    quote_valid=True,
                    source="raft",
                    split=split_of(short_id(c.chunk_id, q)),
                    teacher=teacher.name,
                    metadata={
                        "chunk_id": c.chunk_id,
                        "doc_id": c.doc_id,
                        "source": c.source,
                        "distractors": "hard" if miner is not None else "random",
                    },
                ).model_dump()
            )
        counts = stats[c.chunk_id]
        counts["examples"] = len(examples)
        counts["chunks"] = 1
        groups.append(Group(group_id=c.chunk_id, examples=examples, counts=dict(counts)))
    return groups


def _usable_questions(text: str, chunk: Chunk, n: int, counter: Counter) -> list[str]:
    out = []
    for q in parse_questions(text, n * 2):
        problem = question_problem(q, chunk.text)
        if problem:
            counter[f"dropped question: {problem}"] += 1
            continue
        out.append(q)
        if len(out) == n:
            break
    return out
