"""RAFT examples from labelled QA sets (HotpotQA, SQuAD 2.0, NQ-oracle, generic JSONL).

The gold documents are the oracle; distractors come from the example's own context (HotpotQA's eight non-gold
paragraphs, NQ's non-gold passages), from the workspace index, or from the data set's other documents. The
chain-of-thought is written by a teacher, or, with `cot="evidence"`, built from the gold evidence itself (HotpotQA's
supporting-fact sentences, the SQuAD / NQ sentence holding the answer), so a labelled set yields quoted RAFT data with
no teacher at all.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.datasets.base import sentence_with
from ragtune.hashing import short_id
from ragtune.llm.base import LLM, GenerationConfig
from ragtune.prompts import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE, shown_text
from ragtune.records import ContextDoc
from ragtune.splits import keep, split_of
from ragtune.synth import prompts
from ragtune.synth.config import FromQAConfig as FromQAConfig  # re-exported: the settings of this builder
from ragtune.synth.distractors import DistractorPool, Exclusion, HardNegativeMiner, assemble, pick_distractors
from ragtune.synth.raft import (
    SynthConfigError,
    SynthSummary,
    _progress,
    answer_counts,
    answer_with_retries,
    check_resume,
    run_waves,
    write_final_manifest,
)
from ragtune.synth.records import Group, RaftExample
from ragtune.synth.store import GroupFile
from ragtune.synth.validate import CotCheck, check_cot, normalize_ws
from ragtune.workspace import Manifest, Workspace

STAGE = "synth-raft"
FORMATS = ("hotpotqa", "squad", "nq", "jsonl")


@dataclass
class QARecord:
    """One labelled question, normalised across data sets."""

    id: str
    question: str
    answer: str
    oracles: list[ContextDoc]
    evidence: list[tuple[str, str]] = field(default_factory=list)  # (title, sentence) to quote
    own_distractors: list[ContextDoc] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


# ---- readers -------------------------------------------------------------------------------------------------------


def _foundation_items(fmt: str, path: Path) -> list[Any]:
    """The data set's QAItems from the reader every stage uses (`ragtune.datasets`); its errors are synth's."""
    from ragtune.datasets import DatasetError, load_items

    try:
        return load_items(fmt, path)
    except DatasetError as exc:
        raise SynthConfigError(str(exc)) from None


def read_hotpotqa(path: Path) -> Iterator[QARecord]:
    for item in _foundation_items("hotpotqa", path):
        yield QARecord(
            id=item.id,
            question=item.question,
            answer=item.answers[0] if item.answers else "",
            oracles=item.gold_docs,
            evidence=list(item.evidence),
            own_distractors=item.distractor_docs,
            metadata=dict(item.metadata),
        )


def read_squad(path: Path, include_unanswerable: bool = False) -> Iterator[QARecord]:
    """SQuAD as every stage reads it; an unanswerable question (SQuAD 2.0) only with `include_unanswerable`. The
    article's other paragraphs are not used as the example's own distractors (distractors come from the index or
    the pool)."""
    for item in _foundation_items("squad", path):
        if not item.answerable or not item.answers:
            if include_unanswerable:
                yield QARecord(id=item.id, question=item.question, answer="", oracles=item.gold_docs,
                               metadata={"unanswerable": True})
            continue
        yield QARecord(id=item.id, question=item.question, answer=item.answers[0], oracles=item.gold_docs,
                       evidence=list(item.evidence))


def read_nq(path: Path) -> Iterator[QARecord]:
    """NQ-oracle as every stage reads it; a question without a gold passage or an answer is left out, and a passage
    that holds an answer is never a distractor."""
    for item in _foundation_items("nq", path):
        if not item.gold_docs or not item.answers:
            continue
        with_answer = set(item.metadata.get("answer_passages", ()))
        yield QARecord(
            id=item.id,
            question=item.question,
            answer=item.metadata.get("evidence_answer", item.answers[0]),
            oracles=item.gold_docs,
            evidence=list(item.evidence),
            own_distractors=[d for d in item.distractor_docs if d.doc_id not in with_answer],
        )


def read_generic_jsonl(path: Path) -> Iterator[QARecord]:
    """Generic QA JSONL as every stage reads it (`ragtune.datasets.generic`: the keys, aliases and gold flags are
    documented there). The first answer is the target; the evidence to quote is the record's own, else the oracle
    sentence holding the answer. A question without an oracle document is an error: RAFT needs one."""
    for item in _foundation_items("jsonl", path):
        if not item.gold_docs:
            raise SynthConfigError(
                f"{path}: question {item.id!r} has no oracle document (give oracle / gold, or context / documents)"
            )
        answer = item.answers[0] if item.answers else ""
        evidence = list(item.evidence)
        if not evidence and answer:
            for doc in item.gold_docs:
                sentence = sentence_with(doc.text, answer)
                if sentence:
                    evidence.append((doc.title, sentence))
                    break
        yield QARecord(
            id=item.id,
            question=item.question,
            answer=answer,
            oracles=item.gold_docs,
            evidence=evidence,
            own_distractors=item.distractor_docs,
        )


def read_records(fmt: str, path: str | Path, include_unanswerable: bool = False) -> Iterator[QARecord]:
    path = Path(path)
    if not path.exists():
        raise SynthConfigError(f"no such file: {path}")
    if fmt == "hotpotqa":
        return read_hotpotqa(path)
    if fmt == "squad":
        return read_squad(path, include_unanswerable)
    if fmt == "nq":
        return read_nq(path)
    if fmt == "jsonl":
        return read_generic_jsonl(path)
    raise SynthConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


# ---- chain of thought from evidence ------------------------------------------------------------------------------


def evidence_cot(question: str, answer: str, evidence: Sequence[tuple[str, str]]) -> str:
    """A quoted chain of thought built from gold evidence: each supporting sentence quoted, then the answer."""
    parts = ["To answer the question, I look for the relevant facts in the documents."]
    for n, (title, sentence) in enumerate(evidence):
        where = f"The document about {title}" if title else "The document"
        lead = where + (" says" if n == 0 else " also says")
        parts.append(f"{lead} {BEGIN_QUOTE}{sentence}{END_QUOTE}")
    parts.append(f"Putting this together, the answer is {answer}.")
    return " ".join(parts) + f"\n{ANSWER_TAG} {answer}"


def evidence_cot_short(question: str, answer: str, evidence: Sequence[tuple[str, str]]) -> str:
    """The same quoted evidence without the connecting prose: each supporting sentence quoted, then the answer.

    On HotpotQA the answer is 117 SmolLM2 tokens (median) instead of 164, so a CPU trains on more examples per minute
    and the tuned student spends less time decoding filler.
    """
    quotes = " ".join(f"{BEGIN_QUOTE}{sentence}{END_QUOTE}" for _title, sentence in evidence)
    return f"{quotes}\n{ANSWER_TAG} {answer}"


def _answer_matches(predicted: str, gold: str) -> bool:
    p, g = normalize_ws(predicted).lower().strip(" .\"'"), normalize_ws(gold).lower().strip(" .\"'")
    return bool(g) and (g in p or (p in g and len(p) >= max(1, len(g) // 2)))


# ---- the builder ---------------------------------------------------------------------------------------------------


def synthesize_from_qa(
    fmt: str,
    path: str | Path,
    workspace: Workspace | str | Path,
    config: FromQAConfig | None = None,
    teacher: LLM | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    searcher: Any = None,
) -> SynthSummary:
    """RAFT examples from a labelled set, appended per record to `out` (default WORKSPACE/synth/raft.jsonl)."""
    config = config or FromQAConfig()
    if config.cot == "teacher" and teacher is None:
        raise SynthConfigError("--cot teacher needs --teacher MODEL")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ws.ensure()
    out = Path(out) if out else ws.raft_path
    started = time.perf_counter()
    records = [r for r in read_records(fmt, path, config.include_unanswerable) if keep(r.id, config.split)]
    if config.limit is not None:
        records = records[: config.limit]
    if not records:
        raise SynthConfigError(f"no usable records in {path} for split {config.split!r}")

    source = config.distractor_source
    if source == "auto":
        has_own = sum(len(r.own_distractors) >= config.most_distractors + len(r.oracles) for r in records)
        if has_own >= len(records) * 0.9:
            source = "own"
        elif searcher is not None or ws.index_settings_path.exists():
            source = "index"
        else:
            source = "pool"
    pool = None
    miner = None
    if source in ("own", "pool"):
        # the data set's own documents fill in where an example's own context runs short
        seen: dict[str, ContextDoc] = {}
        for r in records:
            for d in [*r.oracles, *r.own_distractors]:
                seen.setdefault(d.doc_id, d)
        pool = DistractorPool(sorted(seen.values(), key=lambda d: d.doc_id))
    if source == "index":
        if searcher is None:
            from ragtune.retrieve.search import Searcher

            searcher = Searcher(ws)
        miner = HardNegativeMiner(searcher)

    teacher_name = teacher.name if (teacher is not None and config.cot == "teacher") else None
    fingerprint = {k: getattr(config, k) for k in FromQAConfig.FINGERPRINT} | {
        "teacher": teacher_name,
        "format": fmt,
        "input": str(Path(path).resolve()),
        "distractor_source": source,
    }
    check_resume(ws, STAGE, out, fingerprint, overwrite)
    manifest = Manifest(
        stage=STAGE,
        config=config.model_dump() | {"format": fmt, "teacher": teacher_name},
        inputs={"path": str(Path(path).resolve())},
        extra={"fingerprint": fingerprint, "out": str(out), "status": "running", "distractor_source": source},
    )
    ws.write_manifest(manifest)
    summary = SynthSummary(out=out, groups_total=len(records))
    a_config = GenerationConfig(max_new_tokens=config.answer_tokens, seed=config.seed)
    batch_sensitive = getattr(teacher, "batch_sensitive", False)
    with GroupFile(out, overwrite=overwrite) as store_file:
        summary.groups_done_before = sum(r.id in store_file.done for r in records)
        bar, task = _progress(progress, len(records), summary.groups_done_before, f"synth from-qa {fmt}")
        wave_size = config.concurrency if config.cot == "teacher" else 256
        with bar:
            run_waves(
                records, lambda r: r.id, wave_size, batch_sensitive,
                lambda work: _qa_wave(work, config, fmt, pool, miner, teacher, a_config),
                store_file, summary, bar, task,
            )
        summary.examples_total = store_file.examples
        summary.counts = dict(store_file.counts)
    if teacher is not None and config.cot == "teacher":
        summary.usage = teacher.usage.to_dict()
    summary.seconds = time.perf_counter() - started
    write_final_manifest(ws, manifest, summary, {"records": len(records)})
    return summary


def _qa_wave(
    records: Sequence[QARecord],
    config: FromQAConfig,
    fmt: str,
    pool: DistractorPool | None,
    miner: HardNegativeMiner | None,
    teacher: LLM | None,
    a_config: GenerationConfig,
) -> list[Group]:
    jobs: list[tuple[QARecord, list[ContextDoc], bool, Counter]] = []
    shown_k: list[int] = []
    for r in records:
        rng = random.Random(f"{config.seed}:{r.id}")
        counter: Counter = Counter(records=1)
        exclude = Exclusion(r.oracles)
        k = config.draw_distractors(rng)
        shown_k.append(k)
        need = k + len(r.oracles)
        own = r.own_distractors if miner is None else []
        distractors = pick_distractors(rng, need, exclude, pool, own=own, miner=miner, query=r.question)
        if len(distractors) < need:
            counter["short_of_distractors"] += 1
        docs, kept = assemble(rng, r.oracles, distractors, k, config.p_oracle)
        jobs.append((r, docs, kept, counter))

    checks: list[CotCheck] = []
    attempts: list[int] = []
    if config.cot in ("evidence", "evidence-short"):
        write_cot = evidence_cot if config.cot == "evidence" else evidence_cot_short
        for r, _docs, _kept, _counter in jobs:
            if not r.answer:
                checks.append(CotCheck(False, "no answer (unanswerable)"))
            elif not r.evidence:
                checks.append(CotCheck(False, "no evidence sentence"))
            else:
                checks.append(
                    check_cot(
                        write_cot(r.question, r.answer, r.evidence), [shown_text(d) for d in r.oracles]
                    )
                )
            attempts.append(1)
    else:
        assert teacher is not None
        conversations = []
        for (r, docs, _kept, _counter), k in zip(jobs, shown_k, strict=True):
            oracles = [d.model_copy(update={"is_oracle": True}) for d in r.oracles]
            if config.teacher_context == "oracle":
                teacher_docs = oracles
            else:
                others = [d for d in docs if not d.is_oracle][:k]
                teacher_docs = sorted([*oracles, *others], key=lambda d: short_id("teacher-order", d.doc_id))
            conversations.append(prompts.cot_messages(teacher_docs, r.question, answer_hint=r.answer or None))

        def accept(i: int, check: CotCheck) -> CotCheck:
            gold = jobs[i][0].answer
            if gold and not _answer_matches(check.answer, gold):
                return CotCheck(
                    False,
                    "answer disagrees with the gold answer",
                    check.cot_answer,
                    check.answer,
                    check.quotes,
                    check.quotes_ok,
                )
            if gold:  # train on the gold wording of the answer
                reasoning = check.cot_answer.rsplit(ANSWER_TAG, 1)[0].rstrip()
                return CotCheck(True, "", f"{reasoning}\n{ANSWER_TAG} {gold}", gold, check.quotes, check.quotes_ok)
            return check

        checks, attempts = answer_with_retries(
            teacher,
            conversations,
            [[shown_text(d) for d in r.oracles] for r, *_ in jobs],
            a_config,
            config.retries,
            config.concurrency,
            accept=accept,
        )

    groups = []
    for (r, docs, kept, counter), check, n_attempts in zip(jobs, checks, attempts, strict=True):
        counter.update(answer_counts(check, n_attempts))
        examples = []
        if check.valid:
            examples.append(
                RaftExample(
                    id=r.id,
                    group_id=r.id,
                    question=r.question,
                    documents=docs,
                    oracle_ids=[d.doc_id for d in r.oracles],
                    oracle_kept=kept,
                    dropped_oracles=[] if kept else [d.model_copy(update={"is_oracle": True}) for d in r.oracles],
                    cot_answer=check.cot_answer,
                    answer=r.answer or check.answer,
                    quotes=check.quotes,
                    quote_valid=True,
                    source=fmt,
                    split=split_of(r.id),
                    teacher=None if config.cot != "teacher" else (teacher.name if teacher else None),
                    metadata={"cot": config.cot, **{k: v for k, v in r.metadata.items() if v is not None}},
                ).model_dump()
            )
        counter["examples"] = len(examples)
        groups.append(Group(group_id=r.id, examples=examples, counts=dict(counter)))
    return groups
