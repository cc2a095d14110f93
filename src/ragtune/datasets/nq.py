"""NQ-oracle JSONL ("Lost in the Middle" release, gzipped or not): the gold passage is in `ctxs` (isgold)."""

from __future__ import annotations

from pathlib import Path

from ragtune.datasets.base import DatasetError, QAItem, dedupe_strings, read_rows
from ragtune.hashing import short_id
from ragtune.records import ContextDoc


def load_nq(path: Path) -> list[QAItem]:
    items = []
    for lineno, record in read_rows(path):
        question = str(record.get("question", "")).strip()
        if not question:
            raise DatasetError(f"{path}:{lineno}: record has no 'question'")
        gold: list[ContextDoc] = []
        distractors: list[ContextDoc] = []
        for ctx in record.get("ctxs", []):
            title, text = str(ctx.get("title", "")), str(ctx.get("text", "")).strip()
            if not text:
                continue
            doc = ContextDoc(doc_id=short_id("nq", title, text), title=title, text=text)
            (gold if ctx.get("isgold") else distractors).append(doc)
        items.append(
            QAItem(
                id=str(record.get("id") or short_id("nq", question)),  # the id synthesis gives it
                question=question,
                answers=dedupe_strings(list(record.get("answers", []))),
                gold_docs=gold,
                distractor_docs=distractors,
                dataset="nq",
            )
        )
    return items
