"""Choosing distractors and assembling the documents of one RAFT example.

Rules that the reference implementations break and this module keeps: a distractor is never the oracle (by id, by
text, or by overlapping the oracle's span in the same document, which would make it a second oracle), never appears
twice, and the k+1 distractors that replace a dropped oracle are all distinct. P is the probability of KEEPING the
oracle, as in the paper.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ragtune.records import ContextDoc
from ragtune.synth.validate import normalize_ws


def _key(text: str) -> str:
    return normalize_ws(text).lower()


class DistractorPool:
    """Random distractors drawn from a fixed, ordered list of documents (chunks of the index, or a data set's)."""

    def __init__(self, docs: Sequence[ContextDoc], spans: dict[str, tuple[str, int, int]] | None = None):
        self.docs = list(docs)
        self.spans = spans or {}  # doc_id -> (parent document id, start, end), for overlap checks

    def __len__(self) -> int:
        return len(self.docs)

    def sample(self, rng: random.Random, n: int, exclude: Exclusion) -> list[ContextDoc]:
        """n distinct random documents that `exclude` allows; fewer only when the pool runs out."""
        if n <= 0 or not self.docs:
            return []
        out: list[ContextDoc] = []
        tried: set[int] = set()

        def consider(i: int) -> None:
            tried.add(i)
            doc = self.docs[i]
            if exclude.allows(doc, self.spans.get(doc.doc_id)):
                exclude.add(doc)
                out.append(doc)

        # rejection sampling is cheap on a big pool; a shuffled scan of the rest finishes a small or crowded one
        for _ in range(8 * n + 16):
            if len(out) == n or len(tried) == len(self.docs):
                break
            i = rng.randrange(len(self.docs))
            if i not in tried:
                consider(i)
        if len(out) < n and len(tried) < len(self.docs):
            rest = [i for i in range(len(self.docs)) if i not in tried]
            rng.shuffle(rest)
            for i in rest:
                if len(out) == n:
                    break
                consider(i)
        return out


class Exclusion:
    """What may not become a distractor: the oracles, what overlaps them, and what was already picked."""

    def __init__(self, oracles: Sequence[ContextDoc], oracle_spans: Sequence[tuple[str, int, int]] = ()):
        self.ids: set[str] = set()
        self.texts: set[str] = set()
        self.spans = list(oracle_spans)
        for doc in oracles:
            self.add(doc)

    def add(self, doc: ContextDoc) -> None:
        self.ids.add(doc.doc_id)
        self.texts.add(_key(doc.text))

    def allows(self, doc: ContextDoc, span: tuple[str, int, int] | None = None, parent_id: str | None = None) -> bool:
        if doc.doc_id in self.ids or _key(doc.text) in self.texts or not doc.text.strip():
            return False
        if parent_id is not None and parent_id in self.ids:
            return False
        if span is not None:
            for parent, start, end in self.spans:
                if span[0] == parent and span[1] < end and start < span[2]:
                    return False
        return True


class HardNegativeMiner:
    """Top-ranked index hits for the question that are not the oracle: distractors a retriever would really return."""

    def __init__(self, searcher: Any, mode: str = "hybrid", depth: int = 20):
        self.searcher = searcher
        self.mode = mode
        self.depth = depth

    def mine(self, query: str, n: int, exclude: Exclusion) -> list[ContextDoc]:
        if n <= 0:
            return []
        hits = self.searcher.search(query, k=max(self.depth, n * 3), mode=self.mode)
        out: list[ContextDoc] = []
        for hit in hits:
            doc = ContextDoc(doc_id=hit.chunk_id, text=hit.text, title=hit.title)
            if exclude.allows(doc, (hit.doc_id, hit.start, hit.end), parent_id=hit.doc_id):
                exclude.add(doc)
                out.append(doc)
                if len(out) == n:
                    break
        return out


def pick_distractors(
    rng: random.Random,
    n: int,
    exclude: Exclusion,
    pool: DistractorPool | None,
    own: Sequence[ContextDoc] = (),
    miner: HardNegativeMiner | None = None,
    query: str = "",
) -> list[ContextDoc]:
    """n distinct distractors: the example's own (shuffled), then mined hard negatives, then random ones."""
    out: list[ContextDoc] = []
    if own:
        candidates = list(own)
        rng.shuffle(candidates)
        for doc in candidates:
            if len(out) == n:
                break
            if exclude.allows(doc):
                exclude.add(doc)
                out.append(doc)
    if miner is not None and len(out) < n and query:
        out.extend(miner.mine(query, n - len(out), exclude))
    if pool is not None and len(out) < n:
        out.extend(pool.sample(rng, n - len(out), exclude))
    return out


def assemble(
    rng: random.Random, oracles: Sequence[ContextDoc], distractors: Sequence[ContextDoc], k: int, p_oracle: float
) -> tuple[list[ContextDoc], bool]:
    """Shuffled documents for one example and whether the oracle was kept.

    `distractors` should hold k + len(oracles) distinct documents: with probability P the oracles and the first k are
    shown; otherwise the oracles' places go to the next distractors, so the example still shows as many documents.
    """
    kept = rng.random() < p_oracle
    if kept:
        docs = [d.model_copy(update={"is_oracle": True}) for d in oracles]
        docs += [d.model_copy(update={"is_oracle": False}) for d in distractors[:k]]
    else:
        docs = [d.model_copy(update={"is_oracle": False}) for d in distractors[: k + len(oracles)]]
    rng.shuffle(docs)
    return docs, kept
