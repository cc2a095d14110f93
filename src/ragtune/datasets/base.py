"""The one record every QA data-set reader returns, `QAItem`, and the helpers the readers share."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ragtune.jsonl import open_text, read_jsonl
from ragtune.records import ContextDoc

Split = Literal["eval", "train", "all"]


class DatasetError(ValueError):
    """Bad data-set input (missing file, unknown format, unreadable records); the message says which."""


class QAItem(BaseModel):
    """One labelled question with everything any stage needs: eval's settings, synthesis' RAFT examples and the
    documents ingestion indexes.

    `gold_docs` are the oracle documents (HotpotQA: the two supporting paragraphs), `distractor_docs` the data set's
    own non-gold documents (HotpotQA: the eight other paragraphs), `supporting_facts` the gold sentences as text and
    `evidence` the same sentences with the title of their document, to quote. An unanswerable question (SQuAD 2.0)
    has `answerable=False` and no answers.
    """

    id: str
    question: str
    answers: list[str] = Field(default_factory=list)
    gold_docs: list[ContextDoc] = Field(default_factory=list)
    distractor_docs: list[ContextDoc] = Field(default_factory=list)
    supporting_facts: list[str] = Field(default_factory=list)
    evidence: list[tuple[str, str]] = Field(default_factory=list)
    answerable: bool = True
    dataset: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    def documents(self) -> list[ContextDoc]:
        """Gold then distractor documents, each text once: what ingesting the data set indexes for this item."""
        return unique_docs(self.gold_docs + self.distractor_docs)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def sentence_at(text: str, position: int) -> str:
    """The sentence of `text` that holds character `position` (a light splitter; good enough to quote)."""
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.start() >= position:
            return text[start : m.start()].strip()
        start = m.end()
    return text[start:].strip()


def sentence_with(text: str, answer: str) -> str | None:
    """The sentence of `text` holding `answer` (case-insensitive if it is not there verbatim), else None: the
    evidence a labelled question's answer is quoted from."""
    i = text.find(answer)
    if i == -1:
        i = text.lower().find(answer.lower())
    return sentence_at(text, i) if i != -1 and answer.strip() else None


def read_json(path: Path) -> Any:
    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) per line of a JSONL file (gzipped or not); a bad line is a DatasetError naming it."""
    return read_jsonl(path, error=DatasetError)


def dedupe_strings(values: list[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        v = str(v).strip()
        if v and v not in out:
            out.append(v)
    return out


def unique_docs(docs: list[ContextDoc]) -> list[ContextDoc]:
    """Each document text once, first occurrence kept."""
    seen: set[str] = set()
    out = []
    for d in docs:
        if d.text not in seen:
            seen.add(d.text)
            out.append(d)
    return out
