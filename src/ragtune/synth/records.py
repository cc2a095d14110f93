"""Records the synthesis stage writes and the training / evaluation stages read.

Kept beside the builders (not in `ragtune.records`) because only synth produces them; later stages import them from
here. The document shown inside an example, `ContextDoc`, is the foundation's (`ragtune.records`), re-exported here.
All are pydantic, so a JSONL line is `Model.model_validate_json(line)` away.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ragtune.records import ContextDoc


class RaftExample(BaseModel):
    """One RAFT training example: a question, shuffled documents, and a chain-of-thought answer.

    `documents` is what the student sees, already shuffled; `oracle_kept` is False for the (1-P) share of examples
    whose oracle was replaced by one more distractor, and then `dropped_oracles` holds it. `oracle_ids` name the
    oracle documents either way, so a trainer or evaluator can tell what the answer was drawn from.
    """

    id: str
    group_id: str
    question: str
    documents: list[ContextDoc]
    oracle_ids: list[str]
    oracle_kept: bool
    dropped_oracles: list[ContextDoc] = Field(default_factory=list)  # the oracles not shown, kept for pairs / eval
    cot_answer: str = ""
    answer: str
    quotes: list[str] = Field(default_factory=list)
    quote_valid: bool = True
    source: str = "raft"
    split: str | None = None
    teacher: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def oracle_index(self) -> list[int]:
        return [i for i, d in enumerate(self.documents) if d.is_oracle]


class PairExample(BaseModel):
    """(question, positive chunk, hard negatives) for retriever training (MultipleNegativesRankingLoss)."""

    id: str
    question: str
    positive_id: str
    positive: str
    negative_ids: list[str] = Field(default_factory=list)
    negatives: list[str] = Field(default_factory=list)
    source: str = "raft"
    split: str | None = None


class PreferenceExample(BaseModel):
    """A DPO pair: the same prompt, a validated answer (chosen) and a worse one (rejected), with why it is worse."""

    id: str
    example_id: str
    messages: list[dict[str, str]]
    chosen: str
    rejected: str
    reason: str
    student: str | None = None
    split: str | None = None


class Group(BaseModel):
    """What one unit of work (a chunk, or a labelled QA record) produced: the resume granularity of every builder."""

    group_id: str
    examples: list[dict[str, Any]] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
