"""Route a query to the level of the index that can answer it, and say why.

"Summarise X", "give an overview of Y", "compare A and B" want whole documents, which the per-document summary level
represents one row each; a fact question wants the chunk that states the fact. Two routers:
- rules (`route="auto"`): keyword patterns; the reason names the words that matched, so the choice is auditable and
  free;
- LLM (`route="llm"`): P("yes") that the question asks for a summary, overview or comparison; the reason quotes it.
Without a summary level the router falls back to chunks and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ragtune.llm import LLM
from ragtune.retrieve.llm_rerank import yes_probabilities

OVERVIEW = re.compile(
    r"\b(summar(?:y|ise|ize|ies|ising|izing)|overview|outline|tl;?dr|gist|main (?:points|ideas|themes)|key points|"
    r"compare|comparison|contrast|differences? between|similarities|pros and cons|what (?:is|are) \S+(?: \S+)? about|"
    r"in general|broadly|high[- ]level)\b",
    re.IGNORECASE,
)
_QUESTION = ("Does this question ask for a summary, an overview or a comparison of whole documents (yes), rather than "
             "for one specific fact (no)?\n\nQuestion: {q}\n\nAnswer yes or no.")


@dataclass(frozen=True)
class Route:
    """Where a query goes ("summaries" or "chunks") and a human-readable reason."""

    level: str
    reason: str


def route_by_rules(query: str) -> Route:
    words = sorted({m.group(0).lower() for m in OVERVIEW.finditer(query)})
    if words:
        return Route("summaries", f"rules: overview words {', '.join(repr(w) for w in words)}")
    return Route("chunks", "rules: no summary / overview / compare words, a fact question")


def route_by_llm(query: str, llm: LLM, threshold: float = 0.5) -> Route:
    p = yes_probabilities(llm, [[{"role": "user", "content": _QUESTION.format(q=query)}]])[0]
    level = "summaries" if p >= threshold else "chunks"
    return Route(level, f"llm {llm.name}: P(overview question) = {p:.2f} ({'>=' if p >= threshold else '<'} "
                        f"{threshold})")


def route(query: str, mode: str, llm: LLM | None = None, summaries_available: bool = True) -> Route:
    """The route for `query` under `mode` ("off", "auto" or "llm")."""
    if mode == "off":
        return Route("chunks", "routing off")
    if mode == "llm":
        if llm is None:
            raise ValueError("route='llm' needs an LLM")
        decided = route_by_llm(query, llm)
    elif mode == "auto":
        decided = route_by_rules(query)
    else:
        raise ValueError(f"unknown route mode {mode!r}; choose off, auto or llm")
    if decided.level == "summaries" and not summaries_available:
        return Route("chunks", decided.reason + "; no summary level in this index (ingest with --summaries), so "
                                                "chunks")
    return decided
