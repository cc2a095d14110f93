"""RAFT synthesis from the workspace's chunks: the teacher writes questions per chunk, then a quoted chain-of-thought
answer per question; each example gets its oracle plus k distractors, and the oracle is kept with probability P.

Work runs in waves of `concurrency` chunks: one batched (or concurrent, for a server) call writes the questions of the
whole wave, one more writes all answers, and only the invalid ones are retried, with the teacher told what was wrong.
A wave's chunk groups are appended to `synth/raft.jsonl` as they finish (see `store.py`); the randomness of a chunk
comes from (seed, chunk id) only, so an interrupted run resumed gives exactly the uninterrupted run's examples.

Two prompt styles (`teacher_prompts.py`): `instruct` asks for questions, then quoted chain-of-thought answers (a
strong teacher); `fewshot` asks a small local teacher for one (question, short answer) per focus sentence. Either
way the evidence is located in the oracle by `grounding.py` when the teacher's own quotes are not verbatim, and every
question passes the filters of `filters.py`; rejections go to a 0600 side file, and a quality report (JSON + md)
is written beside the output.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ragtune.hashing import short_id
from ragtune.llm.base import LLM, GenerationConfig, Message
from ragtune.records import Chunk
from ragtune.splits import split_of
from ragtune.synth import filters, grounding, prompts, teacher_prompts
from ragtune.synth.distractors import DistractorPool, Exclusion, HardNegativeMiner, assemble, pick_distractors
from ragtune.synth.quality import TeacherClock, write_quality_report
from ragtune.synth.quality import report_paths as report_paths  # re-exported: callers find the report through raft
from ragtune.synth.records import ContextDoc, Group, RaftExample
from ragtune.synth.store import GroupFile
from ragtune.synth.validate import CotCheck, check_cot, parse_questions
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
    # prompts and grounding
    prompt_style: str = "auto"  # fewshot (small local teachers) | instruct (strong ones) | auto: by teacher
    ground: bool = True  # locate the evidence in the chunk when the teacher's quotes are not verbatim
    cot_style: str = "full"  # grounded chain of thought: "full" (connecting prose) or "short" (quotes + answer)
    fuzzy_threshold: float = 85.0  # 0-100 partial ratio for the fuzzy tier of answer alignment
    max_quotes: int = 2
    resample: int = 0  # few-shot: re-ask a slot whose candidate was rejected, up to N times, sampling
    resample_temperature: float = 0.8
    # filters (each counted; rejections kept in rejected.jsonl)
    copy_threshold: float = 0.8  # a question this similar (0-1 character ratio) to a chunk sentence is a copy
    round_trip_k: int = 5  # the source chunk must be in the retriever's top k for the question; 0 turns it off
    round_trip: str = "retriever"  # retriever | student (shown the chunk, it answers as the teacher did) | either
    # (the retriever, else the student) | both (the retriever, then the student)
    student_match: float = 0.5  # 0-1 agreement (F1 or answer recall) the student's answer needs with the teacher's
    dedup_threshold: float = 0.9  # MiniLM cosine at or above which a question duplicates an earlier one; 1+ = off
    max_question_words: int = 30
    max_answer_words: int = 12  # answers longer than this (after shortening) are rejected
    short_answer_words: int = 6  # a longer teacher answer is shortened to the part the question does not say
    max_cot_words: int = 160

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
        "prompt_style",
        "ground",
        "cot_style",
        "fuzzy_threshold",
        "max_quotes",
        "copy_threshold",
        "round_trip_k",
        "dedup_threshold",
        "max_question_words",
        "max_answer_words",
        "short_answer_words",
        "max_cot_words",
    )
    # settings added later, with the value every file written before them implies: in the fingerprint only when
    # set otherwise, so those files still resume
    FINGERPRINT_LATER = {"round_trip": "retriever", "student_match": 0.5, "resample": 0, "resample_temperature": 0.8}

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the file it appends to."""
        data = {k: getattr(self, k) for k in self.FINGERPRINT}
        return data | {k: getattr(self, k) for k, default in self.FINGERPRINT_LATER.items()
                       if getattr(self, k) != default}

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
        if self.prompt_style not in teacher_prompts.STYLES:
            raise SynthConfigError(f"--prompt-style must be one of {', '.join(teacher_prompts.STYLES)}")
        if self.cot_style not in ("full", "short"):
            raise SynthConfigError("--cot-style must be 'full' or 'short'")
        if not 0.0 <= self.fuzzy_threshold <= 100.0:
            raise SynthConfigError("--fuzzy-threshold must be between 0 and 100")
        if self.round_trip_k < 0 or self.max_quotes < 1:
            raise SynthConfigError("--round-trip-k must be >= 0 and --max-quotes >= 1")
        if self.round_trip not in filters.ROUND_TRIP_MODES:
            raise SynthConfigError(f"--round-trip must be one of {', '.join(filters.ROUND_TRIP_MODES)}")
        if not 0.0 <= self.student_match <= 1.0:
            raise SynthConfigError("--student-match must be between 0 and 1")
        if self.resample < 0 or self.resample_temperature <= 0:
            raise SynthConfigError("--resample must be >= 0 and --resample-temperature > 0")


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


def _round_trip(ws: Workspace, config: RaftConfig, searcher: Any) -> tuple[Any, filters.RoundTrip | None, str]:
    """The searcher (built once, shared with hard-negative mining and dedup), the round-trip filter when on, and
    what it did, for the report. Without an index (a library caller passing `chunks`) round trip is off, said so
    in the manifest and the report; hard negatives cannot do without one."""
    wanted = config.round_trip_k > 0 and config.round_trip != "student"
    if not wanted and not config.hard_negatives and config.dedup_threshold >= 1.0:
        return searcher, None, "off"
    if searcher is None:
        from ragtune.index.search import Searcher

        try:
            searcher = Searcher(ws)
        except FileNotFoundError:
            if config.hard_negatives:
                raise SynthConfigError(
                    f"No index in workspace {ws.root}: hard negatives are mined from it; run "
                    f"`ragtune ingest PATH --workspace {ws.root}`."
                ) from None
            return None, None, "off: no index in the workspace" if wanted else "off"
    if not wanted:
        return searcher, None, "off"
    return searcher, filters.RoundTrip(searcher, config.round_trip_k, config.search_mode), (
        f"top {config.round_trip_k} ({config.search_mode})")


def _student_check(config: RaftConfig, teacher: LLM, student: LLM | None, note: str
                   ) -> tuple[filters.StudentCheck | None, str]:
    """The student round trip when the mode asks for it, and the report's note on how round trip ran."""
    if config.round_trip == "retriever":
        return None, note
    if student is None:
        if teacher.name.startswith("openai:"):
            from ragtune.llm import load_llm

            student = load_llm()
        else:
            student = teacher
    check = filters.StudentCheck(student, config.student_match, batch_size=config.concurrency)
    said = f"student {student.name} answers from the chunk (match >= {config.student_match})"
    if config.round_trip == "student" or note.startswith("off"):
        return check, said + ("" if config.round_trip == "student" else f"; retriever {note}")
    return check, f"{note}, {'else' if config.round_trip == 'either' else 'then'} {said}"


def synthesize_raft(
    workspace: Workspace | str | Path,
    teacher: LLM,
    config: RaftConfig | None = None,
    chunks: Sequence[Chunk] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    searcher: Any = None,
    student: LLM | None = None,
) -> SynthSummary:
    """Write RAFT examples for the workspace's chunks (or `chunks`) to `out` (default WORKSPACE/synth/raft.jsonl),
    the rejected questions to `rejected.jsonl` beside it, and the quality report (`quality_report.json` / `.md`).

    `student` answers the questions in the `student` / `either` / `both` round-trip modes; by default the teacher itself
    when it is local (the bundled model is also the default student), else the bundled model."""
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

    style = teacher_prompts.resolve_style(config.prompt_style, teacher.name)
    fingerprint = config.fingerprint() | {"teacher": teacher.name}
    check_resume(ws, STAGE, out, fingerprint, overwrite)
    pool_docs, spans = chunk_docs(all_chunks)
    pool = DistractorPool(pool_docs, spans)
    searcher, round_trip, round_trip_note = _round_trip(ws, config, searcher)
    student_check, round_trip_note = _student_check(config, teacher, student, round_trip_note)
    miner = HardNegativeMiner(searcher, mode=config.search_mode) if config.hard_negatives else None

    manifest = Manifest(
        stage=STAGE,
        config=asdict(config) | {"teacher": teacher.name, "prompt_style_used": style},
        inputs={"chunks": short_id(*sorted(c.chunk_id for c in eligible))},
        extra={"fingerprint": fingerprint, "out": str(out), "status": "running", "round_trip": round_trip_note},
    )
    ws.write_manifest(manifest)
    summary = SynthSummary(out=out, groups_total=len(eligible))
    q_config = GenerationConfig(max_new_tokens=config.question_tokens, temperature=config.temperature, seed=config.seed)
    a_config = GenerationConfig(max_new_tokens=config.answer_tokens, temperature=config.temperature, seed=config.seed)
    batch_sensitive = getattr(teacher, "batch_sensitive", False)
    rejected = filters.rejected_path(out)
    if overwrite and rejected.exists():
        rejected.unlink()
    filters.open_private(rejected)
    global _CLOCK
    _CLOCK = clock = TeacherClock(out, fresh=overwrite or not out.exists(), teacher=teacher)
    with GroupFile(rejected) as rejected_file, GroupFile(out, overwrite=overwrite) as store_file:
        summary.groups_done_before = sum(c.chunk_id in store_file.done for c in eligible)
        bar, task = _progress(progress, len(eligible), summary.groups_done_before, "synth raft")

        def make_groups(work: list[Chunk]) -> list[Group]:
            groups, rejections = _run_wave(work, teacher, config, style, pool, miner, round_trip, q_config, a_config,
                                           student_check)
            for g in groups:  # rejections first: a kill between the two appends leaves the group to redo, not lost
                if g.group_id not in rejected_file.done:
                    rejected_file.append(Group(group_id=g.group_id, examples=rejections[g.group_id]))
            clock.save()
            return groups

        with bar:
            run_waves(eligible, lambda c: c.chunk_id, config.concurrency, batch_sensitive, make_groups,
                      store_file, summary, bar, task)
        if summary.groups_failed == 0 and config.dedup_threshold < 1.0:
            filters.dedup_group_file(out, [c.chunk_id for c in eligible], rejected_file, searcher,
                                     config.dedup_threshold, teacher.name)
    clock.save()
    _CLOCK = None
    final = GroupFile(out)  # re-read: the dedup pass may have rewritten the file
    final.close()
    summary.examples_total = final.examples
    summary.counts = dict(final.counts)
    summary.usage = teacher.usage.to_dict()
    summary.seconds = time.perf_counter() - started
    write_final_manifest(ws, manifest, summary, {"chunks": len(eligible)})
    write_quality_report(out, summary, eligible, style, teacher.name, {"round_trip": round_trip_note})
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


@dataclass
class _Accepted:
    """A question that passed every per-chunk filter, with its grounded (or teacher-quoted) chain of thought."""

    question: str
    answer: str
    cot: str
    quotes: list[str]
    grounding: str  # "teacher" | "exact" | "normalised" | "fuzzy"
    rank: int | None = None  # the source chunk's rank in the round-trip search
    student: bool = False  # the retriever's round trip did not pass it (or was off): the student must
    attempt: int = 0  # few-shot: 0 for the greedy answer, n for the n-th resample of its slot


class _ChunkWork:
    """What one chunk collects during a wave: counts, rejections, and the questions still in the running."""

    def __init__(self, chunk: Chunk, teacher: str, student: str = ""):
        self.chunk = chunk
        self.teacher = teacher
        self.student = student  # "": no student round trip; else the round-trip mode that asks it
        self.stats: Counter = Counter()
        self.rejections: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.to_student: dict[str, str] = {}  # normalised question -> why the retriever did not pass it

    def reject(self, filter_name: str, reason: str, question: str, answer: str = "", detail: str = "",
               answered: bool = False) -> None:
        """Count and keep one rejection. `answered`: it reached the answer stage (so it is a `dropped:` answer,
        keeping `answers_valid + dropped == questions`); otherwise it is a `dropped question:`."""
        self.stats[f"rejected: {filter_name}"] += 1
        self.stats[f"dropped: {reason}" if answered else f"dropped question: {reason}"] += 1
        self.rejections.append(filters.Rejection(filter_name, reason, question, answer, detail)
                               .to_record(self.chunk.chunk_id, self.teacher))

    def question_ok(self, question: str, config: RaftConfig, round_trip: filters.RoundTrip | None,
                    answer: str = "") -> bool:
        """Well-formedness, the same question twice in this chunk, and round-trip consistency."""
        self.stats["candidates"] += 1
        problem = filters.well_formed(question, self.chunk.text, answer, config.copy_threshold)
        if problem:
            self.reject("well_formed", problem, question, answer)
            return False
        key = grounding.normalise(question)
        if key in self.seen:
            self.reject("duplicate", "same question twice for the chunk", question, answer)
            return False
        if self.student == "student" or (self.student and round_trip is None):
            self.to_student[key] = "retriever not asked"
        elif round_trip is not None:
            problem = round_trip.problem(question, self.chunk.chunk_id)
            if problem:
                detail = "top: " + ", ".join(round_trip.ranked(question)[:3])
                if self.student != "either":
                    self.reject("round_trip", problem, question, answer, detail=detail)
                    return False
                self.to_student[key] = f"{problem}; {detail}"
            elif self.student == "both":
                self.to_student[key] = ""
        self.seen.add(key)
        return True


def _grounded_cot(question: str, answer: str, quotes: list[str], title: str, style: str) -> str:
    """The chain of thought written from located sentences, in from-qa's evidence format (one format for the
    student, whichever builder wrote the data)."""
    from ragtune.synth.from_qa import evidence_cot, evidence_cot_short

    evidence = [(title, q) for q in quotes]
    return (evidence_cot_short if style == "short" else evidence_cot)(question, answer, evidence)


def _finish(work: _ChunkWork, config: RaftConfig, question: str, answer: str, cot: str, quotes: list[str],
            method: str, round_trip: filters.RoundTrip | None) -> _Accepted | None:
    """The answer-level filters (answer given away, length budget) on an answer that has its evidence."""
    problem = filters.well_formed(question, work.chunk.text, answer, config.copy_threshold)
    if problem:
        work.reject("well_formed", problem, question, answer, answered=True)
        return None
    problem = filters.length_problem(question, answer, cot, config.max_question_words, config.max_answer_words,
                                     config.max_cot_words)
    if problem is None and len(answer.split()) > config.short_answer_words and any(
        grounding.normalise(answer) == grounding.normalise(q) for q in quotes
    ):
        problem = "answer is a whole sentence"
    if problem:
        work.reject("length", problem, question, answer, answered=True)
        return None
    if not grounding.verbatim(quotes, prompts.shown_text(ContextDoc(doc_id="", text=work.chunk.text,
                                                                   title=work.chunk.title))):
        work.reject("answerable", "quote not in chunk", question, answer, answered=True)  # the invariant, kept
        return None
    rank = round_trip.rank(question, work.chunk.chunk_id) if round_trip is not None else None
    return _Accepted(question, answer, cot, quotes, method, rank, grounding.normalise(question) in work.to_student)


def _ground_answer(work: _ChunkWork, config: RaftConfig, question: str, answer: str,
                   round_trip: filters.RoundTrip | None) -> _Accepted | None:
    """Answerability: locate the teacher's answer in the chunk and quote the sentences found."""
    g = grounding.ground(question, answer, work.chunk.text, config.fuzzy_threshold, config.max_quotes,
                         config.short_answer_words)
    if not g.ok:
        work.reject("answerable", g.reason, question, answer, answered=True)
        return None
    if g.shortened:
        work.stats["answers_shortened"] += 1
    cot = _grounded_cot(question, g.answer, g.quotes, work.chunk.title, config.cot_style)
    return _finish(work, config, question, g.answer, cot, g.quotes, g.method, round_trip)


_CLOCK: TeacherClock | None = None  # the running synthesis' clock (one run per process at a time)


def _timed_generate(teacher: LLM, convs: list[list[Message]], config: GenerationConfig, batch_size: int,
                    works: Sequence[_ChunkWork], owners: Sequence[int]) -> list[Any]:
    """One teacher call, its wall time on the clock and its tokens on the chunks it served."""
    if not convs:
        return []
    t0 = time.perf_counter()
    outs = teacher.generate(convs, config, batch_size=batch_size)
    if _CLOCK is not None:
        _CLOCK.add(time.perf_counter() - t0)
    return outs


def _fewshot_candidate(work: _ChunkWork, text: str, config: RaftConfig,
                       round_trip: filters.RoundTrip | None) -> _Accepted | None:
    """One teacher output through the per-chunk filters: parsed, well formed, round trip, grounded, in budget."""
    parsed = teacher_prompts.parse_qa(text)
    if parsed is None:
        work.stats["candidates"] += 1
        work.reject("well_formed", "no question in the teacher's output", "", detail=text[:300])
        return None
    question, answer = parsed
    if not work.question_ok(question, config, round_trip):
        return None
    work.stats["questions"] += 1
    work.stats["answers_checked"] += 1
    got = _ground_answer(work, config, question, answer, round_trip)
    if got is None:  # the question may come back with another answer when the slot is asked again
        work.seen.discard(grounding.normalise(question))
    return got


def _fewshot_wave(works: list[_ChunkWork], teacher: LLM, config: RaftConfig, round_trip: filters.RoundTrip | None,
                  q_config: GenerationConfig, student: filters.StudentCheck | None = None) -> list[list[_Accepted]]:
    """Small teachers: one (question, answer) per focus sentence, evidence located by `grounding`. A slot whose
    candidate is rejected is asked again up to `resample` times, sampling (a small model's greedy answer is often
    the one invented fact; a sample is another draw), seeded by (seed, attempt), so a rerun gives the same file."""
    n = config.questions_per_chunk
    slots = [(ci, s) for ci, w in enumerate(works) for s in teacher_prompts.focus_sentences(w.chunk.text, n)]
    convs = [teacher_prompts.qa_messages(works[ci].chunk.text, s.text, works[ci].chunk.title) for ci, s in slots]
    found: dict[int, _Accepted] = {}
    todo = list(range(len(slots)))
    for attempt in range(config.resample + 1):
        if not todo:
            break
        gen = q_config if attempt == 0 else replace(q_config, temperature=config.resample_temperature,
                                                    seed=config.seed * 1000 + attempt)
        outs = _timed_generate(teacher, [convs[i] for i in todo], gen, config.concurrency, works,
                               [slots[i][0] for i in todo])
        got: dict[int, _Accepted] = {}
        for i, out in zip(todo, outs, strict=True):
            ci = slots[i][0]
            works[ci].stats["question_retries"] += int(attempt > 0)
            candidate = _fewshot_candidate(works[ci], out.text, config, round_trip)
            if candidate is not None:
                candidate.attempt = attempt
                got[i] = candidate
        if student is not None:  # the student's round trip per attempt, so a slot it rejects is asked again too
            order = sorted(got)
            per_work = [[got[i] for i in order if slots[i][0] == ci] for ci in range(len(works))]
            passed = {id(a) for acc in _student_round_trip(works, per_work, student) for a in acc}
            for i in order:
                if id(got[i]) not in passed:
                    works[slots[i][0]].seen.discard(grounding.normalise(got.pop(i).question))
        found |= got
        todo = [i for i in todo if i not in got]
    accepted: list[list[_Accepted]] = [[] for _ in works]
    for i in sorted(found):
        accepted[slots[i][0]].append(found[i])
    return accepted


def _instruct_questions(works: list[_ChunkWork], teacher: LLM, config: RaftConfig,
                        round_trip: filters.RoundTrip | None, q_config: GenerationConfig) -> list[list[str]]:
    """Strong teachers: n questions per chunk in one list, one retry for chunks short of n usable ones."""
    n = config.questions_per_chunk
    convs = [prompts.question_messages(w.chunk.text, n, w.chunk.title) for w in works]
    outs = _timed_generate(teacher, convs, q_config, config.concurrency, works, list(range(len(works))))
    questions: list[list[str]] = [[] for _ in works]

    def take(i: int, text: str) -> None:
        parsed = parse_questions(text, n * 2)
        if not parsed:  # the whole output is one rejected candidate, so the report still adds up
            works[i].stats["candidates"] += 1
            works[i].reject("well_formed", "no question in the teacher's output", "", detail=text[:300])
        for q in parsed:
            if len(questions[i]) == n:
                break
            if works[i].question_ok(q, config, round_trip):
                questions[i].append(q)

    for i, out in enumerate(outs):
        take(i, out.text)
    short = [i for i, qs in enumerate(questions) if len(qs) < n]
    if short and config.retries > 0:
        retry = [
            convs[i] + [
                {"role": "assistant", "content": outs[i].text},
                {"role": "user", "content": f"Write {n} questions about the text, numbered, one per line, each "
                 "ending with a question mark, in your own words."},
            ]
            for i in short
        ]
        for i, out in zip(short, _timed_generate(teacher, retry, q_config, config.concurrency, works, short),
                          strict=True):
            works[i].stats["question_retries"] += 1
            take(i, out.text)
    return questions


def _instruct_answers(works: list[_ChunkWork], jobs: list[tuple[int, str, list[ContextDoc]]],
                      teacher: LLM, config: RaftConfig, round_trip: filters.RoundTrip | None,
                      a_config: GenerationConfig) -> dict[tuple[int, str], _Accepted]:
    """Quoted CoT answers, invalid ones retried; a teacher whose quotes are verbatim keeps them, otherwise its
    answer is grounded in the chunk (when `ground`)."""
    conversations = []
    for ci, q, docs in jobs:
        c = works[ci].chunk
        oracle = ContextDoc(doc_id=c.chunk_id, text=c.text, title=c.title, is_oracle=True)
        teacher_docs = ([oracle] if config.teacher_context == "oracle"
                        else _teacher_docs(oracle, docs, config.distractors))
        conversations.append(prompts.cot_messages(teacher_docs, q))
    oracles = [[prompts.shown_text(ContextDoc(doc_id="", text=works[ci].chunk.text, title=works[ci].chunk.title))]
               for ci, *_ in jobs]
    t0 = time.perf_counter()
    checks, attempts = answer_with_retries(teacher, conversations, oracles, a_config, config.retries,
                                           config.concurrency, config.min_quotes)
    if _CLOCK is not None:
        _CLOCK.add(time.perf_counter() - t0)
    out: dict[tuple[int, str], _Accepted] = {}
    for (ci, q, _docs), check, n_attempts in zip(jobs, checks, attempts, strict=True):
        work = works[ci]
        work.stats["questions"] += 1
        work.stats["answers_checked"] += n_attempts
        work.stats["answer_retries"] += max(0, n_attempts - 1)
        work.stats["quotes"] += len(check.quotes)
        work.stats["quotes_in_oracle"] += check.quotes_ok
        got: _Accepted | None
        if check.valid:
            got = _finish(work, config, q, check.answer, check.cot_answer, check.quotes, "teacher", round_trip)
        elif config.ground and check.answer:
            work.stats[f"grounded after: {check.reason}"] += 1
            got = _ground_answer(work, config, q, check.answer, round_trip)
        else:
            work.reject("answerable", check.reason, q, check.answer, detail=check.cot_answer[:300], answered=True)
            got = None
        if got is not None:
            out[(ci, q)] = got
    return out


def _student_round_trip(works: list[_ChunkWork], accepted: list[list[_Accepted]],
                        student: filters.StudentCheck | None) -> list[list[_Accepted]]:
    """The student's round trip, one batched call for the wave: the questions the retriever did not pass (or every
    question, in `student` mode) stay only when the student, shown the chunk alone, gives the teacher's answer."""
    asked = [(ci, a) for ci, acc in enumerate(accepted) for a in acc if a.student]
    if student is None or not asked:
        return accepted
    verdicts = student.verdicts([(a.question, a.answer, works[ci].chunk.title, works[ci].chunk.text)
                                 for ci, a in asked])
    failed: set[int] = set()
    for (ci, a), (ok, evidence) in zip(asked, verdicts, strict=True):
        if not ok:
            failed.add(id(a))
            why = works[ci].to_student.get(grounding.normalise(a.question), "")
            reason = ("neither the retriever nor the student found its chunk" if works[ci].student == "either" else
                      "the student did not answer it from the chunk")
            works[ci].reject("round_trip", reason, a.question, a.answer,
                             detail=f"{evidence}; {why}" if why else evidence, answered=True)
    return [[a for a in acc if id(a) not in failed] for acc in accepted]


def _run_wave(
    chunks: Sequence[Chunk],
    teacher: LLM,
    config: RaftConfig,
    style: str,
    pool: DistractorPool,
    miner: HardNegativeMiner | None,
    round_trip: filters.RoundTrip | None,
    q_config: GenerationConfig,
    a_config: GenerationConfig,
    student: filters.StudentCheck | None = None,
) -> tuple[list[Group], dict[str, list[dict[str, Any]]]]:
    works = [_ChunkWork(c, teacher.name, config.round_trip if student is not None else "") for c in chunks]
    if style == "fewshot":
        accepted = _fewshot_wave(works, teacher, config, round_trip, q_config, student)
        questions = [[a.question for a in acc] for acc in accepted]
    else:
        questions = _instruct_questions(works, teacher, config, round_trip, q_config)

    # per question: distractors, P, shuffle — all from the chunk's own RNG, in question order
    jobs: list[tuple[int, str, list[ContextDoc], bool]] = []
    for ci, w in enumerate(works):
        c = w.chunk
        rng = random.Random(f"{config.seed}:{c.chunk_id}")
        oracle = ContextDoc(doc_id=c.chunk_id, text=c.text, title=c.title, is_oracle=True)
        for q in questions[ci]:
            exclude = Exclusion([oracle], [(c.doc_id, c.start, c.end)])
            distractors = pick_distractors(rng, config.distractors + 1, exclude, pool, miner=miner, query=q)
            docs, kept = assemble(rng, [oracle], distractors, config.distractors, config.p_oracle)
            jobs.append((ci, q, docs, kept))
            if len(distractors) < config.distractors + 1:
                w.stats["short_of_distractors"] += 1

    if style == "fewshot":
        done = {(ci, a.question): a for ci, acc in enumerate(accepted) for a in acc}
    else:
        done = _instruct_answers(works, [(ci, q, docs) for ci, q, docs, _k in jobs], teacher, config,
                                 round_trip, a_config)
        kept = _student_round_trip(works, [[a for (cj, _q), a in done.items() if cj == ci] for ci in range(len(works))],
                                   student)
        done = {(ci, a.question): a for ci, acc in enumerate(kept) for a in acc}
    for ci, w in enumerate(works):  # counted once final, so answers_valid is what the file holds
        for a in (a for (cj, _q), a in done.items() if cj == ci):
            w.stats["answers_valid"] += 1
            w.stats[f"grounding: {a.grounding}"] += 1
            if a.student or round_trip is not None:
                w.stats["round trip: by student" if a.student else "round trip: by retriever"] += 1

    groups: list[Group] = []
    for ci, w in enumerate(works):
        c = w.chunk
        examples = []
        for cj, q, docs, kept in jobs:
            got = done.get((cj, q)) if cj == ci else None
            if got is None:
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
                    cot_answer=got.cot,
                    answer=got.answer,
                    quotes=got.quotes,
                    quote_valid=True,
                    source="raft",
                    split=split_of(short_id(c.chunk_id, q)),
                    teacher=teacher.name,
                    metadata={
                        "chunk_id": c.chunk_id,
                        "doc_id": c.doc_id,
                        "source": c.source,
                        "distractors": "hard" if miner is not None else "random",
                        "grounding": got.grounding,
                        "prompt_style": style,
                        "round_trip_rank": got.rank,
                        "round_trip_by": "student" if got.student else ("retriever" if round_trip else "off"),
                        "attempt": got.attempt,
                    },
                ).model_dump()
            )
        w.stats["examples"] = len(examples)
        w.stats["chunks"] = 1
        groups.append(Group(group_id=c.chunk_id, examples=examples, counts=dict(w.stats)))
    return groups, {w.chunk.chunk_id: w.rejections for w in works}
