"""The first stage of search over a workspace: dense, lexical (BM25) or hybrid (reciprocal rank fusion of both).

The LanceDB table is the store of record. For dense search the Searcher keeps the vectors in memory as one float32
matrix and scores exactly with a single matrix-vector product: benchmarks/retrieval.py measured LanceDB's own
brute-force search at about twice the latency of bare FAISS on the same vectors (10k-100k chunks), and a matrix
product matches FAISS. `dense_backend="lancedb"` (or more than `memory_limit` chunks) queries LanceDB instead.

With `SearchConfig.retriever` the queries are embedded by a trained retriever's query encoder (see
`ragtune.index.retriever`). Everything around this first stage (query transforms, small-to-big, routing, a
cross-encoder or LLM reranker) is the next stage's: the public search, `ragtune.retrieve.search.Searcher`, is an
`IndexSearcher` whose `search` runs those stages as `SearchConfig` asks. An IndexSearcher may serve a derived level
of the index (`level="sentences"` / `"summaries"`, see `ragtune.index.levels`).

Metadata filters are applied inside each leg before its top-k (a row mask over the catalog; LanceDB prefilter on the
other backend), so a filtered search returns k hits whenever k chunks match, not whatever survived a post-filter.
A `tenant` filter (what the server adds from the API key) compares the typed tenant column, never a document's
metadata, so a chunk without a tenant or with another one cannot pass it (`ragtune.index.store.filter_sql`).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

import numpy as np
import pyarrow as pa

from ragtune.config import SearchConfig
from ragtune.index.embedding import Embedder
from ragtune.index.fusion import reciprocal_rank_fusion
from ragtune.index.lexical import LexicalIndex
from ragtune.index.retriever import query_encoder_path
from ragtune.index.settings import IndexSettings, index_text
from ragtune.index.store import ChunkStore, filter_mask
from ragtune.records import Hit
from ragtune.workspace import Workspace

MODES = ("hybrid", "dense", "bm25")


def parse_filters(items: list[str] | None) -> dict[str, str]:
    """`key=value` strings to a dict; a `source` filter given as a path is made absolute like stored sources.

    Keys `tenant`, `version`, `doc_id`, `source` and `title` compare the typed columns ingest set; any other key (or
    `meta.KEY`) matches a document's own metadata, which never stands in for those fields (see `index.store`)."""
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


class IndexSearcher:
    """Holds the embedder, the catalog and the BM25 index of one workspace level; reloads them when the table changes.

    The first stage only (`first_stage`, `dense`, `bm25`, `hit`): search through `ragtune.retrieve.search.Searcher`."""

    def __init__(self, workspace: Workspace | str | os.PathLike[str], config: SearchConfig | None = None,
                 embedder: Embedder | None = None, level: str = "chunks"):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.config = config or SearchConfig()
        settings = IndexSettings.load(self.workspace)
        if settings is None:
            raise FileNotFoundError(
                f"No index in workspace {self.workspace.root}: run `ragtune ingest PATH --workspace "
                f"{self.workspace.root}` first."
            )
        self.settings = settings
        self.level_name = level
        self.store = ChunkStore(self.workspace, level)
        self._embedder = embedder
        self._query_embedder: Embedder | None = None
        if self.config.retriever:  # fail at construction, not at the first query, when it does not fit the index
            self._query_path: str | None = query_encoder_path(self.config.retriever, settings.embedder)
        else:
            self._query_path = None
        self._version: int | None = None
        self._catalog: pa.Table | None = None
        self._rows: dict[str, int] = {}
        self._ids: list[str] = []
        self._lexical: LexicalIndex | None = None
        self._vectors: np.ndarray | None = None
        self._last_query: tuple[str, np.ndarray] | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.settings.embedder)
        return self._embedder

    @property
    def query_embedder(self) -> Embedder:
        """What embeds queries: a trained retriever's query encoder when configured, else the index's embedder."""
        if self._query_path is None:
            return self.embedder
        if self._query_embedder is None:
            self._query_embedder = Embedder(self._query_path)
        return self._query_embedder

    def vectors(self, chunk_ids: list[str]) -> np.ndarray:
        """The stored document vectors of these chunks (rows in the given order), from the in-memory matrix."""
        self.refresh()
        if self._vectors is None:
            raise ValueError("stored vectors are only kept in memory with dense_backend='memory'")
        return self._vectors[[self._rows[c] for c in chunk_ids]]

    def hit(self, chunk_id: str, score: float = 0.0, rank: int = 0) -> Hit:
        """One chunk as a Hit (its text, title and metadata), by id."""
        self.refresh()
        if chunk_id not in self._rows:
            raise KeyError(f"no chunk {chunk_id!r} in the index")
        return self._hit(chunk_id, score, rank)

    def refresh(self) -> None:
        """(Re)load the catalog and the lexical index if the chunk table moved since the last search."""
        version = self.store.version
        if version == self._version:
            return
        use_memory = self.config.dense_backend == "memory" and self.store.count() <= self.config.memory_limit
        if use_memory:
            table = self.store.catalog(with_vectors=True)
            dim = self.settings.dim
            column = table["vector"].combine_chunks() if table.num_rows else None
            self._vectors = (
                np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
                if column is not None else np.zeros((0, dim), dtype=np.float32)
            )
            self._catalog = table.drop_columns(["vector"])
        else:
            self._vectors = None
            self._catalog = self.store.catalog()
        self._ids = self._catalog["chunk_id"].to_pylist()
        self._rows = {cid: i for i, cid in enumerate(self._ids)}
        lexical = LexicalIndex.load(self.store.bm25_dir, version)
        if lexical is None or lexical.n_docs != self._catalog.num_rows:
            lexical = build_lexical(self.store, self.settings, self._catalog)
            lexical.save(self.store.bm25_dir, version)
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
        return filter_mask(self.catalog, dict(filter_items)).astype(np.float32)

    def allowed(self, filters: dict[str, str] | None) -> np.ndarray | None:
        """The catalog rows (bool per row, catalog order) that pass the filters; None when nothing is filtered.
        The later stages (windows, parents, links) check every row they add against it."""
        if not filters:
            return None
        return self._mask(tuple(sorted(filters.items()))) > 0

    def passes(self, chunk_id: str, filters: dict[str, str] | None) -> bool:
        """Whether this chunk exists on this level and passes the filters."""
        self.refresh()
        row = self._rows.get(chunk_id)
        if row is None:
            return False
        allowed = self.allowed(filters)
        return allowed is None or bool(allowed[row])

    def dense(self, query: str, k: int, filters: dict[str, str] | None = None) -> list[tuple[str, float]]:
        self.refresh()
        return self.dense_by_vector(self.query_vector(query), k, filters)

    def query_vector(self, query: str) -> np.ndarray:
        """The query's embedding; the last one is kept, so a later stage of the same query (scoring linked
        documents) does not pay for a second encoder pass."""
        last = self._last_query  # one read: a concurrent query may replace it meanwhile
        if last is None or last[0] != query:
            last = (query, self.query_embedder.encode_query(query))
            self._last_query = last
        return last[1]

    def score_chunks(self, query: str, chunk_ids: list[str], filters: dict[str, str] | None = None
                     ) -> list[tuple[str, float]]:
        """(chunk_id, cosine to the query) of the given chunks that exist and pass the filters, best first: ranks a
        known candidate set (a hit's title links) without searching the whole index. Without the in-memory
        vectors (dense_backend="lancedb") the given order is kept, with score 0."""
        self.refresh()
        ids = [c for c in dict.fromkeys(chunk_ids) if c in self._rows]
        if filters and ids:
            mask = self._mask(tuple(sorted(filters.items())))
            ids = [c for c in ids if mask[self._rows[c]] > 0]
        if not ids or self._vectors is None:
            return [(c, 0.0) for c in ids]
        scores = self._vectors[[self._rows[c] for c in ids]] @ np.asarray(self.query_vector(query), dtype=np.float32)
        return sorted(zip(ids, scores.tolist(), strict=True), key=lambda pair: -pair[1])

    def dense_by_vector(self, vector: np.ndarray, k: int, filters: dict[str, str] | None = None
                        ) -> list[tuple[str, float]]:
        """(chunk_id, cosine) of the k most similar chunks that pass the filters."""
        self.refresh()
        if self._vectors is None:
            return self.store.dense_search(vector, k, filters)
        assert self._catalog is not None
        scores = self._vectors @ np.asarray(vector, dtype=np.float32)
        if filters:
            mask = self._mask(tuple(sorted(filters.items())))
            scores = np.where(mask > 0, scores, -np.inf)
            k = min(k, int(mask.sum()))
        k = min(k, scores.shape[0])
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]  # by score, ties by row: deterministic
        return [(self._ids[int(i)], float(scores[i])) for i in top]

    def bm25(self, query: str, k: int, filters: dict[str, str] | None = None) -> list[tuple[str, float]]:
        self.refresh()
        assert self._lexical is not None and self._catalog is not None
        mask = self._mask(tuple(sorted(filters.items()))) if filters else None
        if mask is not None and not mask.any():
            return []
        return [(self._ids[row], score) for row, score in self._lexical.search(query, k, mask)]

    def first_stage(self, query: str, k: int, mode: str, filters: dict[str, str] | None = None,
                    dense_query: str | None = None) -> list[tuple[str, float]]:
        """(chunk_id, score) of this level's top k by one mode; `dense_query` (HyDE) is embedded instead of `query`."""
        self.refresh()
        dense_query = dense_query or query
        if mode == "dense":
            return self.dense(dense_query, k, filters)
        if mode == "bm25":
            return self.bm25(query, k, filters)
        n = max(self.config.candidates, k)
        dense = [cid for cid, _ in self.dense(dense_query, n, filters)]
        lexical = [cid for cid, _ in self.bm25(query, n, filters)]
        return reciprocal_rank_fusion(
            [dense, lexical], [self.config.dense_weight, self.config.bm25_weight], k=self.config.rrf_k
        )[:k]

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
