"""Split documents into chunks whose size is measured in the embedder's own tokens.

Four strategies share one packing routine:
- `tokens`: fixed windows of N tokens with M tokens of overlap (character spans from the tokenizer's offsets).
- `sentences`: whole sentences packed up to N tokens; overlap carries trailing sentences worth at most M tokens.
- `paragraphs`: blank-line paragraphs packed up to N tokens; a markdown heading always starts a new chunk.
- `semantic`: sentences grouped where the embedding similarity of neighbours stays high; a break where it drops.

Every chunk records its document and its character span, so `doc.text[chunk.start:chunk.end] == chunk.text`, and its
id is a hash of (document id, document hash, span): stable across runs, new when the document changes.

Nothing here is quadratic in a document's length, and nothing tokenizes more than a bounded unit at once: a "sentence"
or paragraph longer than `max_unit_chars` (a 50 MB log line without punctuation) is cut at whitespace into pieces
first, and `split_parts` cuts a huge document into parts that ingest chunks, embeds and commits one at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ragtune.hashing import short_id
from ragtune.records import Chunk, Document

CHUNKERS = ("tokens", "sentences", "paragraphs", "semantic")

Span = tuple[int, int]

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) and whitespace, before an uppercase letter,
# digit or opening quote; or at a line break that closes a block. Common abbreviations do not end a sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])|\n\s*\n|\n(?=\s*(?:[-*•]|\d+\.)\s)")
_ABBREVIATIONS = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs|etc|Inc|Ltd|Co|Corp|No|Fig|Vol|Gen|Col|Lt|Sgt|Rev|Mt|Jan|Feb|Mar|Apr|Jun|"
    r"Jul|Aug|Sep|Sept|Oct|Nov|Dec)|\b[A-Z]|\b(?:e\.g|i\.e|U\.S|a\.m|p\.m))\.$"
)
_HEADING = re.compile(r"^#{1,6}\s+\S", re.MULTILINE)


class TokenCounter(Protocol):
    def __call__(self, texts: list[str]) -> list[int]: ...


def _strip_span(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Character spans of sentences in text[start:end], whitespace trimmed."""
    end = len(text) if end is None else end
    spans: list[Span] = []
    cursor = start
    for match in _SENTENCE_END.finditer(text, start, end):
        # Only the tail before the break matters: slicing from `cursor` would copy the whole run of skipped
        # abbreviations again at each one (quadratic on "Dr. Dr. Dr. ..." or a long list of initials).
        candidate = text[max(cursor, match.start() - 64) : match.start()].rstrip()
        if _ABBREVIATIONS.search(candidate[-12:]) and "\n" not in match.group(0):
            continue
        s, e = _strip_span(text, cursor, match.start())
        if e > s:
            spans.append((s, e))
        cursor = match.end()
    s, e = _strip_span(text, cursor, end)
    if e > s:
        spans.append((s, e))
    return spans


def _cut_point(text: str, start: int, limit: int, separators: Sequence[str]) -> int:
    """Where to end a piece that starts at `start` and may not pass `limit`: after the last separator (tried in
    order) in the second half of the window, else at `limit`. Depends on the text alone, so cuts are deterministic."""
    floor = start + (limit - start) // 2
    for sep in separators:
        at = text.rfind(sep, floor, limit)
        if at > start:
            return at + len(sep)
    return limit


def cap_spans(text: str, spans: Sequence[Span], max_chars: int) -> tuple[list[Span], list[int]]:
    """Spans no longer than `max_chars`, cutting longer ones at whitespace; and, for each input span, the index of
    its first piece (so break indices can be mapped). Keeps tokenizer calls bounded on a giant unpunctuated line."""
    out: list[Span] = []
    first: list[int] = []
    for s, e in spans:
        first.append(len(out))
        while e - s > max_chars:
            cut = _cut_point(text, s, s + max_chars, (" ", "\n", "\t"))
            piece = _strip_span(text, s, cut)
            if piece[1] > piece[0]:
                out.append(piece)
            s = cut
        piece = _strip_span(text, s, e)
        if piece[1] > piece[0]:
            out.append(piece)
    return out, first


def split_parts(text: str, part_chars: int) -> list[Span]:
    """Contiguous parts of at most `part_chars` characters covering `text`, cut at a blank line, else a line break,
    else a space when one lies in the second half of the window. Deterministic, so a resumed ingest cuts the same
    parts and can skip the ones already committed."""
    if part_chars < 1:
        raise ValueError(f"part size must be positive, got {part_chars}")
    parts: list[Span] = []
    start = 0
    while len(text) - start > part_chars:
        cut = _cut_point(text, start, start + part_chars, ("\n\n", "\n", " "))
        parts.append((start, cut))
        start = cut
    if start < len(text) or not parts:
        parts.append((start, len(text)))
    return parts


def paragraph_spans(text: str) -> tuple[list[Span], set[int]]:
    """Blank-line separated paragraphs, and the indices of those that begin with a markdown heading."""
    spans: list[Span] = []
    headings: set[int] = set()
    cursor = 0
    boundaries = [m.start() for m in re.finditer(r"\n\s*\n", text)] + [len(text)]
    for boundary in boundaries:
        block_start = cursor
        # A heading inside a block (no blank line before it) still opens a new paragraph.
        inner = [m.start() for m in _HEADING.finditer(text, block_start, boundary) if m.start() > block_start]
        for piece_end in [*inner, boundary]:
            s, e = _strip_span(text, block_start, piece_end)
            if e > s:
                if _HEADING.match(text, s):
                    headings.add(len(spans))
                spans.append((s, e))
            block_start = piece_end
        match = re.compile(r"\n\s*\n").match(text, boundary)
        cursor = match.end() if match else boundary
    return spans, headings


@dataclass
class TokenizerAdapter:
    """Counts tokens and maps token windows to character spans with a Hugging Face fast tokenizer."""

    tokenizer: Any
    max_tokens: int = 256

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def offsets(self, text: str) -> list[Span]:
        enc = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False, verbose=False
        )
        return [tuple(o) for o in enc["offset_mapping"]]


class BaseChunker:
    """Shared packing: units (spans) with token counts, grouped into chunks of at most `chunk_size` tokens."""

    name = "base"
    # A unit (sentence, paragraph) longer than this many characters per token of chunk size is cut at whitespace
    # before it is tokenized. 64 x 240 = 15,360 characters: far above any real sentence (so normal text chunks as
    # before), far below a megabyte line whose one-shot tokenization took gigabytes.
    unit_chars_per_token = 64

    def __init__(self, tokenizer: TokenizerAdapter, chunk_size: int = 240, overlap: int = 0):
        if chunk_size < 8:
            raise ValueError(f"chunk size must be at least 8 tokens, got {chunk_size}")
        if overlap < 0 or overlap >= chunk_size:
            raise ValueError(f"overlap must be in [0, chunk size), got {overlap} for chunk size {chunk_size}")
        self.tok = tokenizer
        self.chunk_size = chunk_size
        self.overlap = overlap

    def signature(self) -> str:
        """Changes whenever a setting would change the chunks; part of each indexed document's hash."""
        return f"{self.name}:{self.chunk_size}:{self.overlap}"

    @property
    def max_unit_chars(self) -> int:
        return self.unit_chars_per_token * self.chunk_size

    def spans(self, doc: Document) -> list[Span]:
        raise NotImplementedError

    def chunk(self, doc: Document) -> list[Chunk]:
        return [self._make(doc, s, e) for s, e in self.enforce_limit(doc.text, self.spans(doc)) if e > s]

    def enforce_limit(self, text: str, spans: list[Span]) -> list[Span]:
        """Re-split any packed chunk whose real token count exceeds the limit (joins can tokenize differently)."""
        counts = self.tok.count([text[s:e] for s, e in spans])
        out: list[Span] = []
        for (s, e), n in zip(spans, counts, strict=True):
            out.extend(self.token_windows(text, s, e) if n > self.chunk_size else [(s, e)])
        return out

    def chunk_many(self, docs: Sequence[Document]) -> list[list[Chunk]]:
        return [self.chunk(doc) for doc in docs]

    def _make(self, doc: Document, start: int, end: int) -> Chunk:
        return Chunk(
            chunk_id=short_id(doc.doc_id, doc.content_hash, str(start), str(end)),
            doc_id=doc.doc_id,
            text=doc.text[start:end],
            start=start,
            end=end,
            source=doc.source,
            title=doc.title,
            doc_hash=doc.content_hash,
            tenant=doc.tenant,
            version=doc.version,
            metadata={**doc.metadata, "modified": doc.modified} if doc.modified is not None else doc.metadata,
        )

    def token_windows(self, text: str, start: int, end: int) -> list[Span]:
        """Fixed windows of chunk_size tokens over text[start:end], stepping chunk_size - overlap."""
        offsets = [(s + start, e + start) for s, e in self.tok.offsets(text[start:end])]
        offsets = [(s, e) for s, e in offsets if e > s]
        if not offsets:
            return [_strip_span(text, start, end)] if text[start:end].strip() else []
        spans = []
        step = self.chunk_size - self.overlap
        for i in range(0, len(offsets), step):
            window = offsets[i : i + self.chunk_size]
            spans.append((window[0][0], window[-1][1]))
            if i + self.chunk_size >= len(offsets):
                break
        return spans

    def pack(self, text: str, units: list[Span], breaks: set[int] | None = None, min_tokens: int = 0) -> list[Span]:
        """Greedy packing of consecutive units.

        `breaks` are unit indices that start a new chunk, unless the chunk so far has fewer than `min_tokens` tokens
        (so a soft, similarity-based break never leaves a one-word chunk behind).
        """
        units, first = cap_spans(text, units, self.max_unit_chars)
        breaks = {first[i] for i in breaks or set() if i < len(first)}
        counts = self.tok.count([text[s:e] for s, e in units])
        chunks: list[Span] = []
        current: list[int] = []
        total = 0

        def flush() -> None:
            nonlocal current, total
            if not current:
                return
            chunks.append((units[current[0]][0], units[current[-1]][1]))
            # Overlap: carry trailing units whose tokens fit in the overlap budget.
            carried: list[int] = []
            budget = self.overlap
            for idx in reversed(current):
                if counts[idx] > budget:
                    break
                carried.insert(0, idx)
                budget -= counts[idx]
            if len(carried) == len(current):
                carried = []
            current, total = carried, sum(counts[i] for i in carried)

        for i, (s, e) in enumerate(units):
            if i in breaks and total >= min_tokens:
                flush()
                current, total = [], 0
            n = counts[i]
            if n > self.chunk_size:
                flush()
                current, total = [], 0
                chunks.extend(self.token_windows(text, s, e))
                continue
            # +1 approximates the separator between units.
            if current and total + n + 1 > self.chunk_size:
                flush()
            current.append(i)
            total += n + (1 if len(current) > 1 else 0)
        if current and (not chunks or units[current[-1]][1] > chunks[-1][1]):
            chunks.append((units[current[0]][0], units[current[-1]][1]))
        return chunks


class TokenChunker(BaseChunker):
    name = "tokens"

    def enforce_limit(self, text: str, spans: list[Span]) -> list[Span]:
        # Windows are exact on the document's tokenization; re-tokenizing a window that starts inside a word can
        # count differently, so no second pass here.
        return spans

    def spans(self, doc: Document) -> list[Span]:
        return self.token_windows(doc.text, 0, len(doc.text))


class SentenceChunker(BaseChunker):
    name = "sentences"

    def spans(self, doc: Document) -> list[Span]:
        return self.pack(doc.text, sentence_spans(doc.text))


class ParagraphChunker(BaseChunker):
    name = "paragraphs"

    def spans(self, doc: Document) -> list[Span]:
        paragraphs, headings = paragraph_spans(doc.text)
        return self.pack(doc.text, paragraphs, breaks=headings - {0})


class SemanticChunker(BaseChunker):
    """Breakpoints where the cosine similarity of adjacent sentences falls below a percentile of the document's own.

    `percentile` = 10 puts a break at the 10% least similar neighbour pairs (relative, so it adapts to each document);
    chunks never exceed `chunk_size` tokens either way.
    """

    name = "semantic"

    def __init__(self, tokenizer: TokenizerAdapter, embed: Callable[[list[str]], np.ndarray], chunk_size: int = 240,
                 overlap: int = 0, percentile: float = 10.0):
        super().__init__(tokenizer, chunk_size, overlap)
        self.embed = embed
        self.percentile = percentile

    def signature(self) -> str:
        return f"{super().signature()}:{self.percentile}"

    def breaks_for(self, text: str, units: list[Span]) -> set[int]:
        if len(units) < 3:
            return set()
        vectors = np.asarray(self.embed([text[s:e] for s, e in units]), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
        sims = (vectors[:-1] * vectors[1:]).sum(axis=1)
        threshold = np.percentile(sims, self.percentile)
        return {i + 1 for i, sim in enumerate(sims) if sim <= threshold}

    def spans(self, doc: Document) -> list[Span]:
        units, _ = cap_spans(doc.text, sentence_spans(doc.text), self.max_unit_chars)
        return self.pack(doc.text, units, breaks=self.breaks_for(doc.text, units), min_tokens=self.chunk_size // 8)


def make_chunker(name: str, tokenizer: TokenizerAdapter, chunk_size: int = 240, overlap: int = 0,
                 embed: Callable[[list[str]], np.ndarray] | None = None) -> BaseChunker:
    """The chunker called `name`; `embed` is needed only by the semantic chunker."""
    if chunk_size > tokenizer.max_tokens:
        raise ValueError(
            f"chunk size {chunk_size} exceeds the embedder's limit of {tokenizer.max_tokens} tokens; the tail of each "
            "chunk would be cut off when embedded. Use a smaller --chunk-size."
        )
    if name == "tokens":
        return TokenChunker(tokenizer, chunk_size, overlap)
    if name == "sentences":
        return SentenceChunker(tokenizer, chunk_size, overlap)
    if name == "paragraphs":
        return ParagraphChunker(tokenizer, chunk_size, overlap)
    if name == "semantic":
        if embed is None:
            raise ValueError("the semantic chunker needs an embedding function")
        return SemanticChunker(tokenizer, embed, chunk_size, overlap)
    raise ValueError(f"unknown chunker {name!r}; choose one of {', '.join(CHUNKERS)}")
