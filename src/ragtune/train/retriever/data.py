"""What retriever training reads: questions with their positive chunks (and answers, where known), tied to the index.

Two inputs are accepted, told apart by their fields, in synth's group files or as plain JSONL records:
- RAFT examples (`synth raft` / `synth from-qa`): question, answer, oracle documents (positives), distractors;
- retriever pairs (`synth pairs`): question, positive chunk, mined hard negatives; no answer.
Positive ids may be chunk ids (synth raft) or document ids (from-qa's HotpotQA paragraphs); `IndexChunks` maps both to
the index's chunks, so training sees exactly the text the index embeds (title line + chunk).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from ragtune.index.settings import index_text
from ragtune.jsonl import read_jsonl
from ragtune.metrics import normalize_answer
from ragtune.splits import split_of
from ragtune.synth.records import PairExample, RaftExample


class RetrieverDataError(ValueError):
    """Training data that cannot be used; the message names the file and what is wrong."""


class TrainQuestion(BaseModel):
    """One question as retriever training sees it, whichever file it came from."""

    id: str
    question: str
    answer: str | None = None  # RAFT data has one; pairs do not
    positive_ids: list[str]
    positives: list[str]
    negative_ids: list[str] = Field(default_factory=list)
    negatives: list[str] = Field(default_factory=list)
    split: str = "train"


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, example) from a synth group file or a plain JSONL file of examples."""
    for lineno, record in read_jsonl(path, error=RetrieverDataError, torn_tail=True):
        if "group_id" in record and "examples" in record:
            for example in record["examples"]:
                yield lineno, example
        else:
            yield lineno, record


def _from_raft(e: RaftExample) -> TrainQuestion:
    oracles = {d.doc_id: d for d in [*e.documents, *e.dropped_oracles] if d.doc_id in e.oracle_ids}
    negatives = [d for d in e.documents if not d.is_oracle and d.doc_id not in e.oracle_ids]
    return TrainQuestion(
        id=e.id,
        question=e.question,
        answer=e.answer or None,
        positive_ids=list(oracles),
        positives=[d.text for d in oracles.values()],
        negative_ids=[d.doc_id for d in negatives],
        negatives=[d.text for d in negatives],
        split=e.split or split_of(e.id),
    )


def _from_pair(p: PairExample) -> TrainQuestion:
    return TrainQuestion(
        id=p.id,
        question=p.question,
        positive_ids=[p.positive_id],
        positives=[p.positive],
        negative_ids=p.negative_ids,
        negatives=p.negatives,
        split=p.split or split_of(p.id),
    )


def load_questions(path: str | Path, split: str = "train") -> list[TrainQuestion]:
    """Questions of one split ('train', 'eval' or 'all') from a RAFT or pairs file; one entry per distinct question."""
    path = Path(path)
    if not path.is_file():
        raise RetrieverDataError(f"{path} does not exist: pass a RAFT file (synth/raft.jsonl) or pairs file "
                                 "(synth/pairs.jsonl)")
    by_question: dict[str, TrainQuestion] = {}
    for lineno, record in _records(path):
        try:
            if "positive" in record and "question" in record:
                q = _from_pair(PairExample.model_validate(record))
            elif "documents" in record and "oracle_ids" in record:
                q = _from_raft(RaftExample.model_validate(record))
            else:
                raise RetrieverDataError(
                    f"{path}:{lineno}: neither a RAFT example (question, documents, oracle_ids, answer) nor a "
                    "retriever pair (question, positive, negatives)"
                )
        except ValidationError as exc:
            raise RetrieverDataError(f"{path}:{lineno}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
        if split != "all" and q.split != split:
            continue
        if not q.positive_ids:
            continue
        seen = by_question.get(q.question)
        if seen is None:
            by_question[q.question] = q
        else:  # several chunks can hold the answer to one question: all are positives
            for pid, text in zip(q.positive_ids, q.positives, strict=True):
                if pid not in seen.positive_ids:
                    seen.positive_ids.append(pid)
                    seen.positives.append(text)
    return list(by_question.values())


@dataclass
class Resolved:
    """A question's positives and negatives as index chunk ids, and everything that must never be a negative."""

    question: TrainQuestion
    positive: str  # the chunk that stands for the answer
    positives: list[str]
    gold_docs: set[str]
    negatives: list[str] = field(default_factory=list)


class IndexChunks:
    """Map training ids and texts to the chunks of a workspace index (through a Searcher's catalog)."""

    def __init__(self, searcher: Any):
        self.searcher = searcher
        catalog = searcher.catalog
        self.ids: list[str] = catalog["chunk_id"].to_pylist()
        self.doc_ids: list[str] = catalog["doc_id"].to_pylist()
        self.titles: list[str] = catalog["title"].to_pylist()
        self.texts: list[str] = catalog["text"].to_pylist()
        self.row = {cid: i for i, cid in enumerate(self.ids)}
        self.by_doc: dict[str, list[int]] = {}
        for i, d in enumerate(self.doc_ids):
            self.by_doc.setdefault(d, []).append(i)
        self.by_text = {" ".join(t.split()): i for i, t in enumerate(self.texts)}
        self.embed_title = searcher.settings.embed_title
        self._normalized: list[str] | None = None

    def rows_for(self, any_id: str, text: str = "") -> list[int]:
        if any_id in self.row:
            return [self.row[any_id]]
        if any_id in self.by_doc:
            return self.by_doc[any_id]
        hit = self.by_text.get(" ".join(text.split()))
        return [hit] if hit is not None else []

    def doc_text(self, chunk_id: str) -> str:
        """What the index embedded for this chunk: the title line and the chunk."""
        i = self.row[chunk_id]
        return index_text(self.titles[i], self.texts[i], self.embed_title)

    def resolve(self, q: TrainQuestion) -> Resolved | None:
        """The question's chunks; None when no positive is in the index (the index was built from other files)."""
        rows: list[int] = []
        for pid, text in zip(q.positive_ids, q.positives, strict=True):
            rows.extend(r for r in self.rows_for(pid, text) if r not in rows)
        if not rows:
            return None
        answer = normalize_answer(q.answer) if q.answer else ""
        # Of a multi-chunk positive document, the chunk that holds the answer stands for it.
        best = next((r for r in rows if answer and answer in normalize_answer(self.texts[r])), rows[0])
        gold_docs = {self.doc_ids[r] for r in rows}
        negatives: list[str] = []
        for nid, text in zip(q.negative_ids, q.negatives, strict=True):
            for r in self.rows_for(nid, text):
                if self.ids[r] not in negatives:
                    negatives.append(self.ids[r])
        return Resolved(q, self.ids[best], [self.ids[r] for r in rows], gold_docs, negatives)

    def answer_rows(self, r: Resolved, cap: int = 50) -> list[int]:
        """Rows outside the gold documents whose text holds the question's (distinctive) answer: likely unlabelled
        positives. An answer found in more than `cap` chunks is not distinctive and marks none."""
        answer = normalize_answer(r.question.answer) if r.question.answer else ""
        if len(answer) < 4 or answer in ("yes", "no"):
            return []
        if self._normalized is None:
            self._normalized = [normalize_answer(t) for t in self.texts]
        rows = [i for i, t in enumerate(self._normalized) if answer in t and self.doc_ids[i] not in r.gold_docs]
        return rows if len(rows) <= cap else []

    def is_false_negative(self, r: Resolved, chunk_id: str) -> bool:
        """A candidate that is gold after all: part of a gold document, or holding the answer itself."""
        i = self.row[chunk_id]
        if self.doc_ids[i] in r.gold_docs:
            return True
        answer = normalize_answer(r.question.answer) if r.question.answer else ""
        # very short answers ("yes", "1990") occur everywhere; only a distinctive answer marks a chunk as gold
        return len(answer) >= 4 and answer not in ("yes", "no") and answer in normalize_answer(self.texts[i])


def gold_label_rows(chunks: IndexChunks, resolved: list[Resolved]) -> tuple[list[list[int]], list[list[int]]]:
    """Per question: its gold chunks' index rows, and the rows never to count as negatives (the other chunks of a
    gold document, chunks holding a distinctive answer): what `frozen_index_nce` reads."""
    positives: list[list[int]] = []
    masked: list[list[int]] = []
    for r in resolved:
        gold_rows = [i for d in r.gold_docs for i in chunks.by_doc.get(d, [])]
        positives.append(sorted({chunks.row[c] for c in r.positives}))
        masked.append(sorted(set(gold_rows) - set(positives[-1]) | set(chunks.answer_rows(r))))
    return positives, masked


def padded(rows: list[int], width: int) -> list[float]:
    """Row indices as a float label row of fixed width (-1: none), the shape sentence-transformers' collator stacks."""
    return [float(i) for i in rows] + [-1.0] * (width - len(rows))


def mine_negatives(
    chunks: IndexChunks,
    resolved: list[Resolved],
    query_vectors: np.ndarray,
    n: int,
    depth: int = 30,
    relative_margin: float = 0.05,
    mode: str = "dense",
) -> dict[str, int]:
    """Fill each question's negatives up to n with the first stage's top hits that are not false negatives.

    Like sentence-transformers' `mine_hard_negatives` (relative_margin: a candidate whose dense score is above
    (1 - margin) x the positive's is dropped as a likely unlabelled positive), but against the vectors the index
    already holds: re-embedding the corpus to mine would cost as much as ingesting it. `mode` is the first stage
    mined: "dense" (the query vector's neighbours) or "hybrid" / "bm25" (the searcher's own ranking, which a
    reranker reads at search time); the margin is always on dense scores, the one scale shared. Returns counts.
    """
    counts = {"dropped_false_negatives": 0, "dropped_margin": 0, "short_of_negatives": 0}
    searcher = chunks.searcher
    for r, qvec in zip(resolved, query_vectors, strict=True):
        pos_score = float(searcher.vectors([r.positive])[0] @ qvec)
        kept = []
        for cid in r.negatives:  # the file's own negatives first, through the same filters
            if chunks.is_false_negative(r, cid):
                counts["dropped_false_negatives"] += 1
            else:
                kept.append(cid)
        if len(kept) < n:
            for cid, score in _first_stage(searcher, r.question.question, qvec, depth, mode):
                if len(kept) >= n:
                    break
                if cid in kept:
                    continue
                if chunks.is_false_negative(r, cid):
                    counts["dropped_false_negatives"] += 1
                elif score > (1.0 - relative_margin) * pos_score:
                    counts["dropped_margin"] += 1
                else:
                    kept.append(cid)
        if len(kept) < n:
            counts["short_of_negatives"] += 1
        r.negatives = kept[:n]
    return counts


def _first_stage(searcher: Any, question: str, qvec: np.ndarray, depth: int, mode: str) -> list[tuple[str, float]]:
    """(chunk id, dense score) of the first stage's top `depth` for one question, in that stage's order."""
    if mode == "dense":
        return list(searcher.dense_by_vector(qvec, depth))
    ids = [h.chunk_id for h in searcher.search(question, k=depth, mode=mode)]
    if not ids:
        return []
    return list(zip(ids, (searcher.vectors(ids) @ qvec).tolist(), strict=True))
