"""NQ-oracle JSONL ("Lost in the Middle" release, gzipped or not): the gold passage is in `ctxs` (isgold; without
one, the first passage that has the answer). The evidence to quote is the first gold sentence holding an answer
(`metadata["evidence_answer"]` names that answer); `metadata["answer_passages"]` lists the other passages that
hold an answer, which synthesis does not use as distractors."""

from __future__ import annotations

from pathlib import Path

from ragtune.datasets.base import DatasetError, QAItem, dedupe_strings, read_rows, sentence_with
from ragtune.hashing import short_id
from ragtune.records import ContextDoc


def load_nq(path: Path) -> list[QAItem]:
    items = []
    for lineno, record in read_rows(path):
        question = str(record.get("question", "")).strip()
        if not question:
            raise DatasetError(f"{path}:{lineno}: record has no 'question'")
        ctxs = [c for c in record.get("ctxs", []) if str(c.get("text", "")).strip()]
        gold_ctxs = [c for c in ctxs if c.get("isgold")] or [c for c in ctxs if c.get("hasanswer")][:1]
        gold = [_doc(c) for c in gold_ctxs]
        distractors = [_doc(c) for c in ctxs if c not in gold_ctxs]
        answers = dedupe_strings(list(record.get("answers", [])))
        evidence: list[tuple[str, str]] = []
        others_with_answer = [_doc(c).doc_id for c in ctxs if c.get("hasanswer") and c not in gold_ctxs]
        metadata: dict = {"answer_passages": others_with_answer}
        for answer in answers:
            found = next(((d.title, s) for d in gold if (s := sentence_with(d.text, answer))), None)
            if found:
                evidence, metadata["evidence_answer"] = [found], answer
                break
        items.append(
            QAItem(
                id=str(record.get("id") or short_id("nq", question)),  # the id synthesis gives it
                question=question,
                answers=answers,
                gold_docs=gold,
                distractor_docs=distractors,
                evidence=evidence,
                dataset="nq",
                metadata=metadata,
            )
        )
    return items


def _doc(ctx: dict) -> ContextDoc:
    title, text = str(ctx.get("title", "")), str(ctx.get("text", "")).strip()
    return ContextDoc(doc_id=short_id("nq", title, text), title=title, text=text)
