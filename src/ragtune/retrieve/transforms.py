"""Query transforms through an LLM: rewrite, HyDE, sub-questions and multi-query.

Each transform turns one query into search variants; the pipeline retrieves for every variant and fuses the rankings
by reciprocal rank (with the original query's own ranking kept in by default: a small model's rewrite can drop the
one word that mattered, and RRF with the original bounds that loss).
- rewrite: one clearer, keyword-complete query;
- hyde (Gao et al. 2022): a hypothetical answer passage whose embedding is searched (the lexical leg keeps the
  query plus the passage's words);
- subqueries: a multi-hop question decomposed into simple questions, each retrieved for;
- multi: several paraphrases (RAG-Fusion).
(`hop`, the one transform without an LLM, needs the first search's results and so lives in `pipeline`.)
Generations are cached on disk per (model, transform, prompt version, query): asking again costs no LLM call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ragtune.llm import LLM, GenerationConfig, Message
from ragtune.retrieve.cache import TransformCache

TRANSFORMS = ("none", "rewrite", "hyde", "subqueries", "multi")
PROMPT_VERSION = "1"  # bump when a prompt changes: cached generations of the old prompt are then not reused

_PROMPTS: dict[str, tuple[str, int]] = {  # transform -> (instruction, max new tokens)
    "rewrite": ("Rewrite the search query below as one clear search query that names every important term. "
                "Reply with the rewritten query only.", 40),
    "hyde": ("Write a short encyclopedia paragraph (two or three sentences) that answers the question below. "
             "Reply with the paragraph only.", 72),
    "subqueries": ("Break the question below into {n} simple questions that each ask for one fact needed to answer "
                   "it. Write one question per line and nothing else.", 64),
    "multi": ("Write {n} different ways to ask the search query below, one per line. Reply with the {n} lines "
              "only.", 64),
}
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.):]|Q\d*[.:]|Question\s*\d*[.:])\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Variant:
    """One way to search for a query: the text the lexical (BM25) leg reads and the text the dense leg embeds."""

    lexical: str
    dense: str
    origin: str = "original"


def _lines(text: str, limit: int, query: str) -> list[str]:
    """Non-empty, de-numbered, distinct lines that are not the query itself, at most `limit`."""
    seen = {query.strip().lower()}
    out = []
    for line in text.splitlines():
        line = _LIST_MARK.sub("", line).strip()
        preamble, colon, rest = line.partition(":")  # "The rewritten query is: ..." -> "..."
        if colon and len(preamble.split()) <= 6 and len(rest.split()) >= 2:
            line = rest
        line = line.strip().strip('"').strip()
        if len(line.split()) < 2 or line.lower() in seen or line.endswith(":"):
            continue
        seen.add(line.lower())
        out.append(line)
        if len(out) >= limit:
            break
    return out


def parse_generation(transform: str, text: str, query: str, n: int) -> list[str]:
    """The usable strings in one generation (an empty list when the model wrote nothing usable)."""
    if transform == "hyde":
        passage = _lines(text.strip().split("\n\n")[0].replace("\n", " "), 1, query)
        return passage if passage and len(passage[0].split()) >= 3 else []
    if transform == "rewrite":
        return _lines(text, 1, query)
    return _lines(text, n, query)


class QueryTransformer:
    """Turns queries into search variants through an LLM, with a disk cache in front of it."""

    def __init__(self, transform: str, llm: LLM, cache: TransformCache | None = None, n: int = 3,
                 keep_original: bool = True, batch_size: int = 8):
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown query transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
        self.transform = transform
        self.llm = llm
        self.cache = cache
        self.n = n
        self.keep_original = keep_original
        self.batch_size = batch_size

    def _key(self, query: str) -> tuple[str, ...]:
        return (self.llm.name, self.transform, PROMPT_VERSION, str(self.n), query)

    def _messages(self, query: str) -> list[Message]:
        instruction, _ = _PROMPTS[self.transform]
        label = "Query" if self.transform in ("rewrite", "multi") else "Question"
        return [{"role": "user", "content": f"{instruction.format(n=self.n)}\n\n{label}: {query}"}]

    def generate(self, queries: Sequence[str]) -> dict[str, list[str]]:
        """query -> the LLM's usable outputs, generating (batched) only for queries not in the cache."""
        if self.transform == "none":
            return {q: [] for q in queries}
        out: dict[str, list[str]] = {}
        todo: list[str] = []
        for q in dict.fromkeys(queries):
            cached = self.cache.get(*self._key(q)) if self.cache is not None else None
            if cached is None:
                todo.append(q)
            else:
                out[q] = cached
        if todo:
            _, max_tokens = _PROMPTS[self.transform]
            generations = self.llm.generate([self._messages(q) for q in todo],
                                            GenerationConfig(max_new_tokens=max_tokens), batch_size=self.batch_size)
            for q, gen in zip(todo, generations, strict=True):
                out[q] = parse_generation(self.transform, gen.text, q, self.n)
                if self.cache is not None:
                    self.cache.put(out[q], *self._key(q))
        return out

    def variants(self, query: str, generated: list[str] | None = None) -> list[Variant]:
        """The variants searched for `query` (the original first when kept, or when the LLM gave nothing usable)."""
        outputs = self.generate([query])[query] if generated is None else generated
        if self.transform == "hyde":
            made = [Variant(lexical=f"{query} {p}", dense=p, origin="hyde") for p in outputs]
        else:
            made = [Variant(lexical=t, dense=t, origin=self.transform) for t in outputs]
        original = Variant(lexical=query, dense=query)
        return [original, *made] if self.keep_original or not made else made
