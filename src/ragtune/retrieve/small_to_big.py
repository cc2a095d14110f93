"""Small-to-big: match on sentences, return more context.

A sentence embedding is precise (one fact, no dilution by the rest of a paragraph) but a sentence alone is too
little to answer from. So the sentence level is searched and each hit is expanded:
- `window=N`: the hit sentence with N sentences either side from the same document (across chunk borders); a hit
  whose sentence already sits inside an earlier hit's window is dropped;
- `parent="chunk"`: the chunk the sentence came from; `parent="document"`: the whole document (its chunks joined).
  Parents are deduplicated: the best-ranked sentence stands for its parent, which appears once.
The matched sentence is kept in `hit.metadata["matched_sentence"]`.
Every row an expansion adds passes the search's filters too (the tenant scope above all): a window or a parent never
carries in a row the first stage could not have returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ragtune.index.levels import parent_chunk_id
from ragtune.index.store import filter_mask
from ragtune.records import Hit


class DocumentOrder:
    """Rows of a level's catalog grouped by document, in document order: the neighbours of any row."""

    def __init__(self, catalog: pa.Table):
        self.catalog = catalog
        ids = catalog["chunk_id"].to_pylist()
        starts = catalog["start"].to_pylist()
        by_doc: dict[str, list[int]] = {}
        for row, doc in enumerate(catalog["doc_id"].to_pylist()):
            by_doc.setdefault(doc, []).append(row)
        self.rows_of: dict[str, list[int]] = {d: sorted(rows, key=lambda r: starts[r]) for d, rows in by_doc.items()}
        self.position: dict[str, tuple[str, int]] = {}
        for doc, rows in self.rows_of.items():
            for i, r in enumerate(rows):
                self.position[ids[r]] = (doc, i)
        self.texts = catalog["text"].to_pylist()
        self.starts = starts
        self.ends = catalog["end"].to_pylist()
        self.ids = ids
        self.row_of: dict[str, int] = {cid: r for r, cid in enumerate(ids)}
        self._masks: dict[tuple[tuple[str, str], ...], np.ndarray] = {}

    def allowed(self, filters: dict[str, str] | None) -> np.ndarray | None:
        """Bool per row of this catalog: passes the filters (None: no filters). Computed on this order's own catalog,
        so the rows agree even if the table moved since the first stage ran."""
        if not filters:
            return None
        key = tuple(sorted(filters.items()))
        if key not in self._masks:
            if len(self._masks) >= 64:
                self._masks.clear()
            self._masks[key] = filter_mask(self.catalog, filters)
        return self._masks[key]

    def neighbours(self, row_id: str, n: int) -> list[int]:
        doc, i = self.position[row_id]
        rows = self.rows_of[doc]
        return rows[max(0, i - n) : i + n + 1]

    def joined(self, rows: Sequence[int]) -> tuple[str, int, int]:
        """The text of consecutive rows of one document, overlaps cut, with its document span."""
        text, end = "", -1
        for r in rows:
            piece = self.texts[r]
            if end > self.starts[r]:
                piece = piece[end - self.starts[r]:]
            text = f"{text} {piece}" if text else piece
            end = max(end, self.ends[r])
        return text, self.starts[rows[0]], end


def expand_windows(hits: Sequence[Hit], order: DocumentOrder, window: int, k: int,
                   filters: dict[str, str] | None = None) -> list[Hit]:
    """Each sentence hit with `window` sentences either side (those passing `filters`); hits already inside an
    earlier window dropped."""
    out: list[Hit] = []
    covered: set[str] = set()
    allowed = order.allowed(filters)
    for h in hits:
        if h.chunk_id in covered or h.chunk_id not in order.position:
            continue
        rows = order.neighbours(h.chunk_id, window)
        if allowed is not None:
            rows = [r for r in rows if allowed[r]]
            if not rows:
                continue
        covered.update(order.ids[r] for r in rows)
        text, start, end = order.joined(rows)
        out.append(h.model_copy(update={
            "text": text, "start": start, "end": end, "rank": len(out) + 1,
            "metadata": {**h.metadata, "matched_sentence": h.text, "window": window},
        }))
        if len(out) == k:
            break
    return out


def to_parents(hits: Sequence[Hit], parent: str, chunk_hit, chunk_order: DocumentOrder, k: int,
               filters: dict[str, str] | None = None) -> list[Hit]:
    """Each sentence hit replaced by its parent chunk or document, each parent once, in best-sentence order.

    `chunk_hit(chunk_id, score, rank)` builds a Hit from the chunk table; `chunk_order` joins a document's chunks.
    A parent chunk (or a document's chunk) that does not pass `filters` is never used."""
    out: list[Hit] = []
    seen: set[str] = set()
    allowed = chunk_order.allowed(filters)
    for h in hits:
        chunk_id = parent_chunk_id(h.chunk_id)
        key = chunk_id if parent == "chunk" else h.doc_id
        if key in seen:
            continue
        row = chunk_order.row_of.get(chunk_id)
        if row is None or (allowed is not None and not allowed[row]):
            continue
        seen.add(key)
        big = chunk_hit(chunk_id, h.score, len(out) + 1)
        if parent == "document":
            rows = [r for r in chunk_order.rows_of[h.doc_id] if allowed is None or allowed[r]]
            text, start, end = chunk_order.joined(rows)
            big = big.model_copy(update={"chunk_id": h.doc_id, "text": text, "start": start, "end": end})
        out.append(big.model_copy(update={
            "metadata": {**big.metadata, "matched_sentence": h.text, "parent": parent}}))
        if len(out) == k:
            break
    return out
