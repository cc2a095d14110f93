"""Typed records that cross stage boundaries, defined once and imported everywhere.

They are pydantic models so every stage can write them to JSONL and read them back without a schema of its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Document(BaseModel):
    """One source document, before chunking.

    `doc_id` is stable: the same file (or the same record of a data set) gives the same id on every run, which is what
    lets ingestion be incremental. `content_hash` changes when the text does.
    """

    doc_id: str
    text: str
    source: str
    title: str = ""
    modified: float | None = None
    content_hash: str = ""
    tenant: str | None = None
    version: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Chunk(BaseModel):
    """A piece of a document that is embedded and retrieved as a unit.

    `start` and `end` are character offsets into the document's text, so `doc.text[start:end] == chunk.text`.
    """

    chunk_id: str
    doc_id: str
    text: str
    start: int
    end: int
    source: str
    title: str = ""
    doc_hash: str = ""
    tenant: str | None = None
    version: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ContextDoc(BaseModel):
    """One document shown to a model inside a prompt: a RAFT example's oracle or distractor, an evaluation question's
    gold or distractor document. Rendered by `ragtune.prompts` as its title line, then its text.

    `doc_id` names what is shown: the chunk id where the text is an indexed chunk (RAFT synthesis), else the id the
    corpus loaders give the document (evaluation sets), so retrieval can be scored against the index either way.
    `is_oracle` marks a RAFT oracle; evaluation keeps gold and distractors in separate lists instead.
    """

    doc_id: str
    text: str
    title: str = ""
    is_oracle: bool = False


class Hit(BaseModel):
    """A ranked search result. `score` is the score of the mode that produced it (cosine, BM25 or fused RRF)."""

    chunk_id: str
    doc_id: str
    source: str
    score: float
    text: str
    title: str = ""
    rank: int = 0
    start: int = 0
    end: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The stable JSON shape printed by `ragtune search --json`."""
        return {
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "source": self.source,
            "score": self.score,
            "text": self.text,
            "title": self.title,
            "metadata": self.metadata,
        }
