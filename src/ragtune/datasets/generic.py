"""Generic QA JSONL, one question per line, read the same by every stage (`ragtune ingest --format qa-jsonl`,
`ragtune synth from-qa jsonl`, `ragtune eval --data jsonl`):

    {"id"?, "question", "answer" | "answers", "oracle" | "gold"?, "context" | "documents"?, "distractors"?,
     "evidence" | "supporting_facts"?, "answerable"?}

Keys have the usual aliases (see `QUESTION_KEYS` ...). Documents are strings or `{id?, title, text, isgold?}`
objects. Context documents flagged gold join the oracle; unflagged context with no oracle field is the oracle; the
rest are distractors. A record without answers counts as unanswerable unless it says `"answerable": true`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragtune.datasets.base import DatasetError, QAItem, dedupe_strings, read_rows, unique_docs
from ragtune.hashing import short_id
from ragtune.records import ContextDoc

ID_KEYS = ("id", "_id", "qid", "question_id")
QUESTION_KEYS = ("question", "query", "input")
ANSWER_KEYS = ("answers", "answer", "gold_answers", "output", "target")
ORACLE_KEYS = ("oracle", "oracles", "gold", "gold_documents", "oracle_documents", "oracle_context")
DOC_KEYS = ("context", "documents", "docs", "contexts", "ctxs", "passages")
GOLD_FLAGS = ("isgold", "is_gold", "is_oracle", "oracle", "gold")


def as_doc(value: Any, dataset: str) -> tuple[ContextDoc, bool | None] | None:
    """A document from a string or a {id?, title, text|content|chunk, isgold|is_oracle|...} object, with its gold
    flag (None: not flagged). Ids: the record's `doc_id` / `id`, else a hash of title and text (a bare string hashes
    its text), so every stage reading the same file agrees on which document is which."""
    if isinstance(value, str):
        text = value.strip()
        return (ContextDoc(doc_id=short_id(dataset, text), text=text), None) if text else None
    if not isinstance(value, dict):
        return None
    title = str(value.get("title") or "")
    text = str(value.get("text") or value.get("content") or value.get("chunk") or "").strip()
    if not text:
        return None
    flags = [value.get(k) for k in GOLD_FLAGS if k in value]
    is_gold = bool(any(flags)) if flags else None
    doc_id = str(value.get("doc_id") or value.get("id") or short_id(dataset, title, text))
    return ContextDoc(doc_id=doc_id, title=title, text=text), is_gold


def docs_from(value: Any, dataset: str) -> list[tuple[ContextDoc, bool | None]]:
    """Every document of a field: a list, one document, or gorilla RAFT's {"title": [[...]], "sentences": [[...]]}."""
    if value is None:
        return []
    if isinstance(value, dict) and "sentences" in value:
        titles = value.get("title") or [[]]
        sentences = value.get("sentences") or [[]]
        titles = titles[0] if titles and isinstance(titles[0], list) else titles
        sentences = sentences[0] if sentences and isinstance(sentences[0], list) else sentences
        titles = list(titles) + [""] * (len(sentences) - len(titles))
        docs = (as_doc({"title": t, "text": s} if t else s, dataset) for t, s in zip(titles, sentences, strict=False))
        return [d for d in docs if d]
    if not isinstance(value, list):
        value = [value]
    return [d for d in (as_doc(v, dataset) for v in value) if d]


def first_of(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first key present and not empty."""
    for key in keys:
        if key in record and record[key] not in (None, "", []):
            return record[key]
    return None


def item_from_record(record: dict[str, Any], dataset: str, where: str) -> QAItem:
    """One record as a QAItem; `where` (file:line) names it in errors."""
    question = first_of(record, QUESTION_KEYS)
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{where}: record has no question (looked for {', '.join(QUESTION_KEYS)})")
    answers_value = first_of(record, ANSWER_KEYS)
    if isinstance(answers_value, dict):  # SQuAD-style {"text": [...]}
        answers_value = answers_value.get("text", [])
    answers = dedupe_strings(answers_value if isinstance(answers_value, list) else [answers_value or ""])

    gold: list[ContextDoc] = [d for d, _ in docs_from(first_of(record, ORACLE_KEYS), dataset)]
    context = docs_from(first_of(record, DOC_KEYS), dataset)
    flagged = any(flag is not None for _, flag in context)
    if not gold and not flagged:
        gold = [d for d, _ in context]  # unflagged context is the oracle
    else:
        gold += [d for d, flag in context if flag]
    gold_texts = {d.text for d in gold}
    distractors = [d for d, _ in context if d.text not in gold_texts]
    distractors += [d for d, _ in docs_from(record.get("distractors"), dataset) if d.text not in gold_texts]

    answerable = record.get("answerable")
    if answerable is None:
        answerable = not record.get("is_impossible", False) and bool(answers)
    item_id = first_of(record, ID_KEYS)
    if item_id is None:  # from the content, so every stage splits the record the same way
        item_id = short_id(dataset, question, answers[0] if answers else "")
    facts = record.get("supporting_facts", record.get("evidence", []))
    facts = [facts] if isinstance(facts, str) else facts if isinstance(facts, list) else []
    facts = [str(s).strip() for s in facts if isinstance(s, str) and s.strip()]
    return QAItem(
        id=str(item_id),
        question=question.strip(),
        answers=answers,
        gold_docs=unique_docs(gold),
        distractor_docs=unique_docs(distractors),
        supporting_facts=facts,
        evidence=[("", s) for s in facts],
        answerable=bool(answerable),
        dataset=dataset,
    )


def items_from_rows(rows: Any, where: str, dataset: str = "jsonl") -> list[QAItem]:
    """QAItems from (line number, record) pairs: what `load_jsonl` reads, for a caller that parsed the lines
    itself (ingestion, which turns a malformed line into a warning)."""
    return [item_from_record(record, dataset, f"{where}:{lineno}") for lineno, record in rows]


def load_jsonl(path: Path) -> list[QAItem]:
    return items_from_rows(read_rows(path), str(path))
