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
is written beside the output. This module owns the run, resume and the manifest (the settings, `RaftConfig`, are in
`config.py`); one wave's teacher calls and filters are in `raft_wave.py`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.hashing import short_id
from ragtune.llm.base import LLM, GenerationConfig, Message
from ragtune.records import Chunk
from ragtune.synth import filters, prompts, raft_wave, teacher_prompts
from ragtune.synth.config import RaftConfig as RaftConfig  # re-exported: the settings of this builder
from ragtune.synth.distractors import DistractorPool, HardNegativeMiner
from ragtune.synth.quality import TeacherClock, write_quality_report
from ragtune.synth.quality import report_paths as report_paths  # re-exported: callers find the report through raft
from ragtune.synth.records import ContextDoc, Group, RaftExample
from ragtune.synth.store import GroupFile
from ragtune.synth.validate import CotCheck, check_cot
from ragtune.workspace import Manifest, Workspace

STAGE = "synth-raft"


class SynthConfigError(ValueError):
    """Bad settings, or settings that conflict with the run already in the output file."""


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


def _round_trip(ws: Workspace, config: RaftConfig, searcher: Any) -> tuple[Any, filters.RoundTrip | None, str]:
    """The searcher (built once, shared with hard-negative mining and dedup), the round-trip filter when on, and
    what it did, for the report. Without an index (a library caller passing `chunks`) round trip is off, said so
    in the manifest and the report; hard negatives cannot do without one."""
    wanted = config.round_trip_k > 0 and config.round_trip != "student"
    if not wanted and not config.hard_negatives and config.dedup_threshold >= 1.0:
        return searcher, None, "off"
    if searcher is None:
        from ragtune.retrieve.search import Searcher

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
        config=config.model_dump() | {"teacher": teacher.name, "prompt_style_used": style},
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
    raft_wave.CLOCK = clock = TeacherClock(out, fresh=overwrite or not out.exists(), teacher=teacher)
    with GroupFile(rejected) as rejected_file, GroupFile(out, overwrite=overwrite) as store_file:
        summary.groups_done_before = sum(c.chunk_id in store_file.done for c in eligible)
        bar, task = _progress(progress, len(eligible), summary.groups_done_before, "synth raft")

        def make_groups(work: list[Chunk]) -> list[Group]:
            groups, rejections = raft_wave.run_wave(work, teacher, config, style, pool, miner, round_trip, q_config,
                                                    a_config, student_check)
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
    raft_wave.CLOCK = None
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
        write_groups(groups, store_file, summary, bar, task)


def write_groups(groups: Sequence[Group], store_file: GroupFile, summary: SynthSummary, bar: Any, task: Any) -> None:
    """Append each group the file does not hold yet (a recomputed wave repeats finished ones), counting it in
    `summary` and on the bar; shared by every builder that writes groups in waves."""
    for group in groups:
        if group.group_id in store_file.done:
            continue
        store_file.append(group)
        summary.groups_written += 1
        summary.examples_written += len(group.examples)
        bar.update(task, advance=1, examples=summary.examples_written)
