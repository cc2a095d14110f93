"""Reranking as a search stage: a cross-encoder, or an LLM judging relevance from P("yes").

`SearchConfig.reranker` names the stage:
- `PATH` or `cross-encoder:PATH`: a sentence-transformers CrossEncoder folder (`ragtune train reranker`) or hub id;
- `llm:MODEL`: any `load_llm` reference (`llm:` alone: the bundled generator). The LLM reads the question and one
  passage and is asked "is the passage relevant? yes or no"; the score is P(yes) renormalised over {yes, no}, read
  from one forward pass (no generation). Rank by that, ties kept in first-stage order.
Both rerank only the first stage's top `rerank_candidates`: an LLM pass per candidate is the dominant cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from ragtune.index.settings import index_text
from ragtune.llm import LLM, Message
from ragtune.records import Hit

_SYSTEM = "You judge whether a passage helps answer a question. Answer with one word: yes or no."
PASSAGE_CHARS = 1200  # about 300 tokens: the judgement rarely needs more, and prefill cost grows with it


class RerankStage(Protocol):
    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]: ...


def load_retrieval_llm(ref: str | None) -> LLM:
    """An LLM for a retrieval stage; None, "" and "default" mean the bundled generator."""
    from ragtune.llm import load_llm

    return load_llm(ref or None)


def relevance_messages(query: str, title: str, text: str) -> list[Message]:
    passage = index_text(title, text)[:PASSAGE_CHARS]
    return [{"role": "system", "content": _SYSTEM},
            {"role": "user", "content": f"Question: {query}\n\nPassage: {passage}\n\n"
                                        "Does the passage help answer the question? Answer yes or no."}]


def yes_probabilities(llm: LLM, conversations: list[list[Message]], batch_size: int = 8) -> list[float]:
    """P(yes) / (P(yes) + P(no)) for each conversation, "Yes" / "No" counted with their lower-case forms (a small
    chat model often starts its answer capitalised)."""
    out = []
    for logps in llm.choice_logprobs(conversations, ["yes", "Yes", "no", "No"], batch_size=batch_size):
        top = max(logps)
        yes, no = (sum(math.exp(x - top) for x in pair) for pair in (logps[:2], logps[2:]))
        out.append(yes / (yes + no))
    return out


class LLMReranker:
    """Reorders hits by an LLM's P("yes", the passage is relevant); the hit's score becomes that probability."""

    def __init__(self, llm: LLM, batch_size: int = 8):
        self.llm = llm
        self.batch_size = batch_size

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        probs = yes_probabilities(self.llm, [relevance_messages(query, h.title, h.text) for h in hits],
                                  self.batch_size)
        order = sorted(range(len(hits)), key=lambda i: (-probs[i], i))[:k]
        return [hits[i].model_copy(update={"score": probs[i], "rank": r}) for r, i in enumerate(order, start=1)]


def make_reranker(ref: str, embed_title: bool = True,
                  llm_for: Callable[[str | None], LLM] = load_retrieval_llm) -> RerankStage:
    """The reranking stage a `SearchConfig.reranker` string names (see the module docstring); `llm_for` turns an
    `llm:REF` into the LLM (a server passes one that reuses the generator it already holds)."""
    kind, sep, rest = ref.partition(":")
    if sep and kind == "llm":
        return LLMReranker(llm_for(rest))
    from ragtune.index.rerank import Reranker

    return Reranker(rest if sep and kind == "cross-encoder" else ref, embed_title=embed_title)
