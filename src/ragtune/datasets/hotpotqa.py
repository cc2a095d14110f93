"""HotpotQA (official JSON): gold documents are the paragraphs named by `supporting_facts`."""

from __future__ import annotations

from pathlib import Path

from ragtune.datasets.base import DatasetError, QAItem, dedupe_strings, read_json
from ragtune.hashing import short_id
from ragtune.records import ContextDoc


def paragraph_text(sentences: list[str]) -> str:
    """HotpotQA sentences carry their own leading spaces; joining them with '' restores the paragraph."""
    return "".join(sentences).strip()


def doc_id(title: str, text: str) -> str:
    """A paragraph's id, from its content: the same paragraph in two files or two questions is one document."""
    return short_id("hotpotqa", title, text)


def load_hotpotqa(path: Path) -> list[QAItem]:
    data = read_json(path)
    if not isinstance(data, list) or (data and not (isinstance(data[0], dict) and "supporting_facts" in data[0])):
        raise DatasetError(f"{path}: HotpotQA files are a JSON list of questions with supporting_facts")
    items = []
    for example in data:
        gold_titles = {title for title, _ in example.get("supporting_facts", [])}
        paragraphs = {title: sentences for title, sentences in example.get("context", [])}
        gold: list[ContextDoc] = []
        distractors: list[ContextDoc] = []
        for title, sentences in example.get("context", []):
            text = paragraph_text(sentences)
            if not text:
                continue
            doc = ContextDoc(doc_id=doc_id(title, text), title=title, text=text)
            (gold if title in gold_titles else distractors).append(doc)
        facts, evidence = [], []
        for title, idx in example.get("supporting_facts", []):
            sentences = paragraphs.get(title, [])
            if 0 <= idx < len(sentences):
                facts.append(sentences[idx].strip())
                if sentences[idx].strip():
                    evidence.append((title, sentences[idx].strip()))
        items.append(
            QAItem(
                id=str(example["_id"]),
                question=example["question"],
                answers=dedupe_strings([example.get("answer", "")]),
                gold_docs=gold,
                distractor_docs=distractors,
                supporting_facts=facts,
                evidence=evidence,
                dataset="hotpotqa",
                metadata={"type": example.get("type"), "level": example.get("level")},
            )
        )
    return items
