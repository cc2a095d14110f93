"""One wave of `synth raft`: the teacher's calls for a wave of chunks, every per-chunk filter, and the wave's groups.

Split from `raft.py` (which owns the settings, the run, resume and the manifest) so each file reads on its own: the
few-shot path (one (question, answer) per focus sentence, resampled when rejected, grounded in the chunk), the
instruct path (questions, then quoted chain-of-thought answers, retried), the student's round trip, and the
assembly of each example's documents from the chunk's own RNG.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ragtune.hashing import short_id
from ragtune.llm.base import LLM, GenerationConfig, Message
from ragtune.records import Chunk
from ragtune.splits import split_of
from ragtune.synth import filters, grounding, prompts, teacher_prompts
from ragtune.synth.distractors import DistractorPool, Exclusion, HardNegativeMiner, assemble, pick_distractors
from ragtune.synth.quality import TeacherClock
from ragtune.synth.records import ContextDoc, Group, RaftExample
from ragtune.synth.validate import parse_questions

if TYPE_CHECKING:
    from ragtune.synth.raft import RaftConfig


def _teacher_docs(oracle: ContextDoc, documents: list[ContextDoc], k: int) -> list[ContextDoc]:
    """What the teacher sees in "all" mode: the oracle among the example's distractors (k of them), in a fixed order
    that does not give the oracle's position away."""
    distractors = [d for d in documents if d.doc_id != oracle.doc_id][:k]
    docs = [oracle.model_copy(update={"is_oracle": True}), *distractors]
    return sorted(docs, key=lambda d: short_id("teacher-order", d.doc_id))



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


CLOCK: TeacherClock | None = None  # the running synthesis' clock (one run per process at a time)


def _timed_generate(teacher: LLM, convs: list[list[Message]], config: GenerationConfig, batch_size: int,
                    works: Sequence[_ChunkWork], owners: Sequence[int]) -> list[Any]:
    """One teacher call, its wall time on the clock and its tokens on the chunks it served."""
    if not convs:
        return []
    t0 = time.perf_counter()
    outs = teacher.generate(convs, config, batch_size=batch_size)
    if CLOCK is not None:
        CLOCK.add(time.perf_counter() - t0)
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
    from ragtune.synth.raft import answer_with_retries  # raft imports this module: not at the top

    t0 = time.perf_counter()
    checks, attempts = answer_with_retries(teacher, conversations, oracles, a_config, config.retries,
                                           config.concurrency, config.min_quotes)
    if CLOCK is not None:
        CLOCK.add(time.perf_counter() - t0)
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


def run_wave(
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
        survivors = _student_round_trip(
            works, [[a for (cj, _q), a in done.items() if cj == ci] for ci in range(len(works))], student)
        done = {(ci, a.question): a for ci, acc in enumerate(survivors) for a in acc}
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
