"""Training pairs from the corpus alone, for adapting a retriever where no teacher and no questions exist.

- Inverse cloze task (ICT; Lee et al. 2019, ORQA): a sentence of a chunk is the query, the chunk with that sentence
  removed is the positive. Removing it is the point: with the sentence left in, the pair is solved by word overlap
  and the encoder learns nothing about what a passage is *about*.
- Independent cropping (Izacard et al. 2022, Contriever): two spans of the same chunk, each drawn independently
  (10-50 % of its words), are query and positive: a passage's parts should embed near each other.
Every pair keeps its source chunk and document, so a trainer can mask the source's own chunks (false negatives by
construction) when it mines hard negatives. Each pair's randomness is seeded by (seed, chunk, kind): the same
corpus and seed give the same pairs whatever the order, the number of chunks, or the other kinds asked for.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ragtune.synth.grounding import split_sentences

PairKind = Literal["ict", "crop"]
KINDS: tuple[PairKind, ...] = ("ict", "crop")


@dataclass(frozen=True)
class CorpusPair:
    """One (query, positive) made from a chunk; `positive` is body text without the title line."""

    id: str
    kind: PairKind
    query: str
    positive: str
    chunk_id: str
    doc_id: str
    title: str = ""


@dataclass(frozen=True)
class CorpusChunk:
    """What pair building reads of an indexed chunk."""

    chunk_id: str
    doc_id: str
    title: str
    text: str


def ict_pair(chunk: CorpusChunk, rng: random.Random, min_words: int = 4) -> CorpusPair | None:
    """A random sentence (of at least `min_words` words) as the query and the rest of the chunk as the positive;
    None for a chunk of fewer than two sentences (nothing would be left to retrieve)."""
    sentences = split_sentences(chunk.text, min_words=min_words)
    if len(sentences) < 2:
        return None
    usable = [s for s in sentences if len(s.text.split()) >= min_words]
    if not usable:
        return None
    s = rng.choice(usable)
    rest = " ".join((chunk.text[: s.start] + " " + chunk.text[s.end :]).split())
    if len(rest.split()) < min_words:
        return None
    return CorpusPair(f"ict:{chunk.chunk_id}", "ict", s.text, rest, chunk.chunk_id, chunk.doc_id, chunk.title)


def crop_pair(chunk: CorpusChunk, rng: random.Random, min_ratio: float = 0.1, max_ratio: float = 0.5,
              min_words: int = 5) -> CorpusPair | None:
    """Two independent random word spans of the chunk (each `min_ratio`-`max_ratio` of its words, at least
    `min_words`); None for a chunk too short to crop twice."""
    words = chunk.text.split()
    if len(words) < 2 * min_words:
        return None

    def crop() -> str:
        length = rng.randint(max(min_words, int(min_ratio * len(words))), max(min_words, int(max_ratio * len(words))))
        start = rng.randint(0, len(words) - length)
        return " ".join(words[start : start + length])

    return CorpusPair(f"crop:{chunk.chunk_id}", "crop", crop(), crop(), chunk.chunk_id, chunk.doc_id, chunk.title)


def build_corpus_pairs(chunks: Iterable[CorpusChunk], kinds: Iterable[str] = KINDS, max_pairs: int | None = None,
                       seed: int = 0) -> list[CorpusPair]:
    """Up to `max_pairs` pairs, one per (chunk, kind), over the chunks in a seeded random order (so a cap samples
    the whole corpus, not its first files)."""
    kinds = list(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown pair kind(s) {unknown or kinds}; choose from {', '.join(KINDS)}")
    order = list(chunks)
    random.Random(seed).shuffle(order)
    makers: dict[str, Callable[[CorpusChunk, random.Random], CorpusPair | None]] = {"ict": ict_pair,
                                                                                     "crop": crop_pair}
    pairs: list[CorpusPair] = []
    for chunk in order:
        for kind in kinds:
            if max_pairs is not None and len(pairs) >= max_pairs:
                return pairs
            pair = makers[kind](chunk, random.Random(f"{seed}:{chunk.chunk_id}:{kind}"))
            if pair is not None:
                pairs.append(pair)
    return pairs


def write_corpus_pairs(path: str | Path, pairs: Iterable[CorpusPair]) -> Path:
    """The pairs as JSONL, created 0600 (they quote the user's documents)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(asdict(pair), ensure_ascii=False) + "\n")
    os.chmod(path, 0o600)
    return path
