"""Search a workspace: dense (LanceDB), lexical (BM25) or hybrid (reciprocal rank fusion of both).

Metadata filters are applied inside each leg before its top-k (LanceDB prefilter; a row mask for BM25), so a
filtered search returns k hits whenever k chunks match, not whatever survived a post-filter.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ragtune.config import SearchConfig
from ragtune.index.embedding import Embedder
from ragtune.index.fusion import reciprocal_rank_fusion
from ragtune.index.lexical import LexicalIndex
from ragtune.index.settings import IndexSettings, index_text
from ragtune.index.store import ChunkStore
from ragtune.records import Hit
from ragtune.workspace import Workspace

MODES = ("hybrid", "dense", "bm25")


def parse_filters(items: list[str] | None) -> dict[str, str]:
    """`key=value` strings to a dict; a `source` filter given as a path is made absolute like stored sources."""
    filters: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"filter {item!r} is not of the form key=value")
        key, value = key.strip(), value.strip()
        if key == "source" and os.path.exists(value):
            value = os.path.abspath(value)
        filters[key] = value
    return filters


def build_lexical(store: ChunkStore, settings: IndexSettings, catalog: pa.Table | None = None) -> LexicalIndex:
    catalog = catalog if catalog is not None else store.catalog()
    texts = [
        index_text(t, x, settings.embed_title)
        for t, x in zip(catalog["title"].to_pylist(), catalog["text"].to_pylist(), strict=True)
    ]
    return LexicalIndex.build(texts)


class Searcher:
    """Holds the embedder, the catalog and the BM25 index of one workspace; reloads them when the table changes."""

    def __init__(self, workspace: Workspace | str | os.PathLike[str], config: SearchConfig | None = None,
                 embedder: Embedder | None = None):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.config = config or SearchConfig()
        settings = IndexSettings.load(self.workspace)
        if settings is None:
            raise FileNotFoundError(
                f"No index in workspace {self.workspace.root}: run `ragtune ingest PATH --workspace "
                f"{self.workspace.root}` first."
            )
        self.settings = settings
        self.store = ChunkStore(self.workspace)
        self._embedder = embedder
        self._version: int | None = None
        self._catalog: pa.Table | None = None
        self._rows: dict[str, int] = {}
        self._lexical: LexicalIndex | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.settings.embedder)
        return self._embedder

    def refresh(self) -> None:
        """(Re)load the catalog and the lexical index if the chunk table moved since the last search."""
        version = self.store.version
        if version == self._version:
            return
        self._catalog = self.store.catalog()
        self._rows = {cid: i for i, cid in enumerate(self._catalog["chunk_id"].to_pylist())}
        lexical = LexicalIndex.load(self.workspace.bm25_dir, version)
        if lexical is None or lexical.n_docs != self._catalog.num_rows:
            lexical = build_lexical(self.store, self.settings, self._catalog)
            lexical.save(self.workspace.bm25_dir, version)
        self._lexical = lexical
        self._mask.cache_clear()
        self._version = version

    @property
    def catalog(self) -> pa.Table:
        self.refresh()
        assert self._catalog is not None
        return self._catalog

    @lru_cache(maxsize=64)  # noqa: B019 - one Searcher lives as long as its workspace is served
    def _mask(self, filter_items: tuple[tuple[str, str], ...]) -> np.ndarray:
        catalog = self.catalog
        tags = catalog["tags"]
        flat = pc.list_flatten(tags)
        parents = np.asarray(pc.list_parent_indices(tags))
        mask = np.ones(catalog.num_rows, dtype=bool)
        for key, value in filter_items:
            matched = parents[np.asarray(pc.equal(flat, f"{key}={value}").fill_null(False))]
            row_mask = np.zeros(catalog.num_rows, dtype=bool)
            row_mask[matched] = True
            mask &= row_mask
        return mask.astype(np.float32)

    def dense(self, query: str, k: int, filters: dict[str, str] | None = None) -> list[tuple[str, float]]:
        self.refresh()
        return self.store.dense_search(self.embedder.encode_query(query), k, filters)

    def bm25(self, query: str, k: int, filters: dict[str, str] | None = None) -> list[tuple[str, float]]:
        self.refresh()
        assert self._lexical is not None and self._catalog is not None
        mask = self._mask(tuple(sorted(filters.items()))) if filters else None
        if mask is not None and not mask.any():
            return []
        ids = self._catalog["chunk_id"]
        return [(ids[row].as_py(), score) for row, score in self._lexical.search(query, k, mask)]

    def search(self, query: str, k: int | None = None, mode: str | None = None,
               filters: dict[str, str] | None = None) -> list[Hit]:
        """The top-k hits for `query`. Scores: cosine (dense), BM25 (bm25), or the fused RRF score (hybrid)."""
        k = k or self.config.k
        mode = mode or self.config.mode
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
        if not query.strip():
            raise ValueError("empty query")
        self.refresh()
        if mode == "dense":
            ranked = self.dense(query, k, filters)
        elif mode == "bm25":
            ranked = self.bm25(query, k, filters)
        else:
            n = max(self.config.candidates, k)
            dense = [cid for cid, _ in self.dense(query, n, filters)]
            lexical = [cid for cid, _ in self.bm25(query, n, filters)]
            ranked = reciprocal_rank_fusion(
                [dense, lexical], [self.config.dense_weight, self.config.bm25_weight], k=self.config.rrf_k
            )[:k]
        return [self._hit(cid, score, rank) for rank, (cid, score) in enumerate(ranked[:k], start=1)]

    def _hit(self, chunk_id: str, score: float, rank: int) -> Hit:
        assert self._catalog is not None
        row = self._catalog.slice(self._rows[chunk_id], 1).to_pylist()[0]
        return Hit(
            chunk_id=chunk_id,
            doc_id=row["doc_id"],
            source=row["source"],
            score=float(score),
            text=row["text"],
            title=row["title"] or "",
            rank=rank,
            start=row["start"],
            end=row["end"],
            metadata=json.loads(row["metadata"]) if row["metadata"] else {},
        )
