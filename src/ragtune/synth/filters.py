"""Question filters of RAFT synthesis, each one counted, each rejection kept with its reason.

Generated test sets are mostly noise unless filtered: a small teacher writes non-questions, copies sentences, asks
what the text never says, or asks the same thing five times. The filters, in the order a question meets them:

- well-formedness: a question (interrogative, ends with "?"), not a copy of a chunk sentence, not giving its own
  answer away;
- round-trip consistency: the retriever finds the source chunk in its top k for the question (a question that does
  not point back to its chunk is vague — "What is the title of the work?" — or about something else); the student,
  shown only the chunk, answering it with the teacher's answer (`StudentCheck`) is the test instead (`student`), the
  second chance (`either`) or a second test (`both`);
- answerability: the answer is found in the chunk (see `grounding.py`);
- a length budget on the question, the answer and the chain of thought;
- near-duplicates across the whole corpus, by MiniLM embedding similarity (`near_duplicates`), run once at the end.

Thresholds live in `RaftConfig`; rejected examples go, with the filter and the reason, to a 0600 `rejected.jsonl`
beside the output (see `raft.py`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.synth.grounding import normalise, split_sentences
from ragtune.synth.records import Group
from ragtune.synth.store import GroupFile, iter_groups
from ragtune.synth.validate import normalize_ws

FILTERS = ("well_formed", "round_trip", "answerable", "length", "duplicate")
_INTERROGATIVE = re.compile(
    r"(?i)^(who|whom|whose|what|when|where|why|how|which|is|are|was|were|do|does|did|can|could|has|have|had|will|"
    r"would|should|in|on|at|for|from|by|with|to|of|during|after|before|according|name)\b"
)


@dataclass
class Rejection:
    """One rejected (question, answer): which filter, why, and the evidence for it (`detail`)."""

    filter: str
    reason: str
    question: str
    answer: str = ""
    detail: str = ""

    def to_record(self, chunk_id: str, teacher: str) -> dict[str, Any]:
        return {"chunk_id": chunk_id, "filter": self.filter, "reason": self.reason, "question": self.question,
                "answer": self.answer, "detail": self.detail, "teacher": teacher}


def well_formed(question: str, chunk_text: str, answer: str = "", copy_threshold: float = 0.8) -> str | None:
    """Why the question is not a well-formed question about the chunk, or None.

    Rejects: no question at all, too short, not interrogative, a copy of a sentence of the chunk (character ratio
    above `copy_threshold`), and a question that contains its own answer ("When was X founded in 1990?")."""
    q = normalize_ws(question)
    if not q:
        return "no question in the teacher's output"
    if not q.endswith("?"):
        return "not a question"
    words = q.rstrip("?").split()
    if len(words) < 3:
        return "question too short"
    nq = normalise(q)
    for s in split_sentences(chunk_text) or []:
        ns = normalise(s.text)
        if len(words) >= 6 and nq in ns:
            return "question copies the chunk"
        if SequenceMatcher(None, nq, ns, autojunk=False).ratio() > copy_threshold:
            return "question copies the chunk"
    if not _INTERROGATIVE.match(q):
        return "not a question"
    na = normalise(answer)
    if na and len(na) >= 3 and f" {na} " in f" {nq} ":
        return "question gives its answer away"
    return None


def length_problem(question: str, answer: str, cot: str, max_question_words: int, max_answer_words: int,
                   max_cot_words: int) -> str | None:
    """The length budget: a long question is several questions, a long answer is not a short answer, and a long
    chain of thought costs training tokens without teaching more."""
    if len(question.split()) > max_question_words:
        return f"question over {max_question_words} words"
    if not answer.strip():
        return "empty answer"
    if len(answer.split()) > max_answer_words:
        return f"answer over {max_answer_words} words"
    if len(cot.split()) > max_cot_words:
        return f"chain of thought over {max_cot_words} words"
    return None


class RoundTrip:
    """Round-trip consistency through the workspace's own search: the question must retrieve its source chunk in
    the top `k`. Hits are cached per question, so a retried chunk costs no second search."""

    def __init__(self, searcher: Any, k: int = 5, mode: str = "hybrid"):
        self.searcher = searcher
        self.k = k
        self.mode = mode
        self._cache: dict[str, list[str]] = {}

    def ranked(self, question: str) -> list[str]:
        if question not in self._cache:
            hits = self.searcher.search(question, k=self.k, mode=self.mode)
            self._cache[question] = [h.chunk_id for h in hits]
        return self._cache[question]

    def problem(self, question: str, chunk_id: str) -> str | None:
        ranked = self.ranked(question)
        if chunk_id in ranked:
            return None
        return f"source chunk not in the retriever's top {self.k}"

    def rank(self, question: str, chunk_id: str) -> int | None:
        ranked = self.ranked(question)
        return ranked.index(chunk_id) + 1 if chunk_id in ranked else None


ROUND_TRIP_MODES = ("retriever", "student", "either", "both")


class StudentCheck:
    """Round-trip consistency through the student: shown only the source chunk (the short evaluation prompt), the
    student must answer the question with the teacher's answer (`match` >= `min_match`).

    The retriever's test misses good questions about a chunk whose neighbours say the same thing (HotpotQA has many
    near-twin paragraphs); the student's test keeps those, and rejects questions the chunk does not settle. It is
    the student the data will train (the bundled model by default), so a question it already answers from the chunk
    is one the student can learn from: the answer is readable there, not invented."""

    def __init__(self, student: Any, min_match: float = 0.5, max_new_tokens: int = 24, batch_size: int = 8):
        self.student = student
        self.min_match = min_match
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def answers(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        """The student's short answers to (question, chunk title, chunk text), greedy, in one batched call."""
        from ragtune.llm.base import GenerationConfig
        from ragtune.metrics import extract_answer
        from ragtune.prompts import build_messages
        from ragtune.records import ContextDoc

        if not items:
            return []
        convs = [build_messages(q, [ContextDoc(doc_id="chunk", text=text, title=title)], "short")
                 for q, title, text in items]
        outs = self.student.generate(convs, GenerationConfig(max_new_tokens=self.max_new_tokens),
                                     batch_size=self.batch_size)
        return [extract_answer(o.text) for o in outs]

    def verdicts(self, items: Sequence[tuple[str, str, str, str]]) -> list[tuple[bool, str]]:
        """For each (question, answer, chunk title, chunk text): whether the student's answer matches the teacher's
        (`match` >= `min_match`), and the evidence ("student: ANSWER (match 0.67)")."""
        said = self.answers([(q, title, text) for q, _a, title, text in items])
        out = []
        for (_q, answer, _t, _x), got in zip(items, said, strict=True):
            score = match(got, answer)
            out.append((score >= self.min_match, f"student: {got[:120]!r} (match {score:.2f})"))
        return out


def match(said: str, answer: str) -> float:
    """0-1 agreement of the student's answer with the teacher's: the larger of SQuAD F1 and the share of the
    answer's words the student said. A small student rambles ("Gian Carlo Menotti's son, ... was born in") around
    the right span; F1 alone calls that 0.25, the recall 0.67, and a wrong span stays near 0 on both."""
    from collections import Counter

    from ragtune.metrics import f1_score, normalize_answer

    gold, pred = normalize_answer(answer).split(), normalize_answer(said).split()
    recall = sum((Counter(gold) & Counter(pred)).values()) / len(gold) if gold else 0.0
    return max(f1_score(said, [answer]), recall)


def near_duplicates(vectors: np.ndarray, threshold: float) -> list[int | None]:
    """For each row (in order), the index of an earlier *kept* row whose cosine similarity is at least
    `threshold`, or None when the row is kept. Greedy in order, so the first phrasing of a question wins and the
    result is the same however the rows were produced. Rows must be L2-normalised (MiniLM's are)."""
    kept: list[int] = []
    out: list[int | None] = []
    for i in range(len(vectors)):
        if kept:
            sims = vectors[kept] @ vectors[i]
            j = int(np.argmax(sims))
            if float(sims[j]) >= threshold:
                out.append(kept[j])
                continue
        kept.append(i)
        out.append(None)
    return out


def open_private(path: Path) -> None:
    """Create `path` (if missing) readable by its owner only: rejected questions and answers are users' data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def rejected_path(out: Path) -> Path:
    """The side file of an output: `raft.jsonl` -> `rejected.jsonl`, `other.jsonl` -> `other.rejected.jsonl`."""
    return out.with_name("rejected.jsonl" if out.name == "raft.jsonl" else f"{out.stem}.rejected.jsonl")


def counts_of(rejections: Sequence[Rejection]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rejections:
        out[f"rejected: {r.filter}"] = out.get(f"rejected: {r.filter}", 0) + 1
    return out


def dedup_group_file(out: Path, chunk_order: Sequence[str], rejected_file: GroupFile, searcher: Any,
                     threshold: float, teacher: str) -> int:
    """Near-duplicates across the corpus, once every chunk is done. Remove questions whose MiniLM embedding is
    within `threshold` of an earlier kept question, earlier in the corpus's chunk order (not the file's: a wave
    retried after a failure must not change the result). The output file is rewritten atomically with the counts
    moved from `answers_valid` to `dropped: near-duplicate`; the removed examples go to the rejected file first, so
    a kill anywhere loses nothing and a rerun is a no-op (greedy dedup of a deduplicated set keeps everything)."""
    groups = list(iter_groups(out))
    order = {cid: i for i, cid in enumerate(chunk_order)}
    ranked = sorted(range(len(groups)), key=lambda i: (order.get(groups[i]["group_id"], len(order)), i))
    flat = [(gi, ei) for gi in ranked for ei in range(len(groups[gi].get("examples", [])))]
    if len(flat) < 2:
        return 0
    if searcher is not None:
        embedder = searcher.embedder
    else:
        from ragtune.index.embedding import Embedder

        embedder = Embedder()
    vectors = embedder.encode([groups[gi]["examples"][ei]["question"] for gi, ei in flat])
    dup_of = near_duplicates(vectors, threshold)
    drop: dict[int, dict[int, dict[str, Any]]] = {}
    for i, ((gi, ei), j) in enumerate(zip(flat, dup_of, strict=True)):
        if j is None:
            continue
        twin = groups[flat[j][0]]["examples"][flat[j][1]]
        example = groups[gi]["examples"][ei]
        sim = float(vectors[i] @ vectors[j])
        drop.setdefault(gi, {})[ei] = Rejection(
            "duplicate", "near-duplicate", example["question"], example["answer"],
            detail=f"cosine {sim:.3f} to {twin['question']!r} ({twin['group_id']})",
        ).to_record(groups[gi]["group_id"], teacher)
    if not drop:
        return 0
    for gi, removed in drop.items():
        gid = f"duplicates:{groups[gi]['group_id']}"
        if gid not in rejected_file.done:
            rejected_file.append(Group(group_id=gid, examples=list(removed.values())))
    lines = []
    for gi, g in enumerate(groups):
        removed = drop.get(gi, {})
        if removed:
            n = len(removed)
            g = dict(g)
            g["examples"] = [e for ei, e in enumerate(g["examples"]) if ei not in removed]
            counts = dict(g.get("counts", {}))
            counts["examples"] = counts.get("examples", 0) - n
            counts["answers_valid"] = counts.get("answers_valid", 0) - n
            counts["dropped: near-duplicate"] = counts.get("dropped: near-duplicate", 0) + n
            counts["rejected: duplicate"] = counts.get("rejected: duplicate", 0) + n
            for ei in removed:
                meta = groups[gi]["examples"][ei].get("metadata", {})
                for key in (f"grounding: {meta.get('grounding')}", f"round trip: by {meta.get('round_trip_by')}"):
                    if counts.get(key):
                        counts[key] -= 1
            g["counts"] = counts
        lines.append(Group.model_validate(g).model_dump_json() + "\n")
    tmp = out.with_name(out.name + ".dedup.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, out.stat().st_mode & 0o777)
    os.replace(tmp, out)
    return sum(len(v) for v in drop.values())
