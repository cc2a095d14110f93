"""The chunk table: one embedded LanceDB table holding every chunk's text, metadata and vector.

Why LanceDB: it is embedded (no server), stores text + metadata + vectors in one versioned table, applies metadata
filters inside the vector search (prefilter, before top-k), and every `add` is one atomic commit. That last property
is what makes ingestion crash-safe: a document's chunks are either all in the table or none are, so the table itself
is the record of what has been indexed (see `ragtune.index.ingest`). benchmarks/retrieval.py measures it against
exact FAISS search.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("LANCE_LOG", "error")  # lance's Rust logger is chatty about benign things on stderr

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ragtune.records import Chunk
from ragtune.workspace import Workspace

TABLE = "chunks"
CATALOG_COLUMNS = ["chunk_id", "doc_id", "doc_key", "source", "title", "text", "start", "end", "metadata", "tags"]
SCOPE_COLUMNS = ["tenant", "version"]  # typed columns the catalog also carries, so in-memory masks can read them
# Access-relevant and identifying fields: typed columns of the table, set by ingest (`--tenant`, `--version`, the
# file's path), never from a document's content. A filter on one of these keys compares the column.
RESERVED_FIELDS = ("tenant", "version", "doc_id", "source", "title")
META_PREFIX = "meta."  # user metadata lives under this namespace in `tags`, so it can never shadow a reserved field
_UNTAGGED = {"modified"}  # a timestamp is never matched exactly; it stays in the metadata JSON


def chunk_tags(chunk: Chunk) -> list[str]:
    """'meta.key=value' strings a metadata filter matches: every scalar metadata entry, namespaced.

    Only user metadata is tagged; the reserved fields are columns. A record field `"tenant": "B"` becomes the tag
    `meta.tenant=B`, which no tenant scope (`tenant = 'B'` on the column) ever reads."""
    tags = []
    for key, value in chunk.metadata.items():
        if key in _UNTAGGED:
            continue
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            tags.append(f"{META_PREFIX}{key}={value}")
    return tags


def sql_string(value: str) -> str:
    """A SQL string literal. Doubling quotes is the whole escape: DataFusion reads no backslash escapes in '...'."""
    return "'" + value.replace("'", "''") + "'"


def filter_terms(filters: dict[str, str] | None) -> list[tuple[str, str, str]]:
    """Filters as (kind, name, value), sorted: ("column", "tenant", "acme") for a reserved key, compared on its typed
    column; ("meta", "lang", "en") for any other key, matched against the metadata tags. `meta.KEY` names user
    metadata explicitly (the way to filter on a record's own `source` or `tenant` field, which only narrows)."""
    terms = []
    for key, value in sorted((filters or {}).items()):
        if key in RESERVED_FIELDS:
            terms.append(("column", key, str(value)))
        else:
            name = key[len(META_PREFIX):] if key.startswith(META_PREFIX) else key
            terms.append(("meta", name, str(value)))
    return terms


def meta_tag_forms(name: str, value: str) -> list[str]:
    """The tags a metadata filter matches: the namespaced form, plus the bare `key=value` that indexes written before
    the namespace hold (never for a reserved key, whose bare tag was the old, spoofable standard field)."""
    forms = [f"{META_PREFIX}{name}={value}"]
    if name not in RESERVED_FIELDS and not name.startswith(META_PREFIX):
        forms.append(f"{name}={value}")
    return forms


def filter_sql(filters: dict[str, str] | None) -> str | None:
    """A LanceDB where-clause that keeps rows whose reserved columns equal the reserved filters and whose metadata
    tags hold every other key=value. Keys never reach the SQL as identifiers: columns come from RESERVED_FIELDS,
    and everything the caller wrote is inside a quoted literal."""
    clauses = []
    for kind, name, value in filter_terms(filters):
        if kind == "column":
            clauses.append(f"{name} = {sql_string(value)}")
        else:
            forms = " OR ".join(f"array_has(tags, {sql_string(tag)})" for tag in meta_tag_forms(name, value))
            clauses.append(f"({forms})")
    return " AND ".join(clauses) if clauses else None


def filter_mask(catalog: pa.Table, filters: dict[str, str] | None) -> np.ndarray:
    """The rows of a catalog (`ChunkStore.catalog`) that pass the filters, by the same rules as `filter_sql`."""
    mask = np.ones(catalog.num_rows, dtype=bool)
    terms = filter_terms(filters)
    if not terms or not catalog.num_rows:
        return mask
    tags = catalog["tags"]
    flat = pc.list_flatten(tags)
    parents = np.asarray(pc.list_parent_indices(tags))
    for kind, name, value in terms:
        if kind == "column":
            mask &= np.asarray(pc.equal(catalog[name], value).fill_null(False), dtype=bool)
            continue
        matched = np.asarray(pc.is_in(flat, pa.array(meta_tag_forms(name, value))).fill_null(False), dtype=bool)
        row_mask = np.zeros(catalog.num_rows, dtype=bool)
        row_mask[parents[matched]] = True
        mask &= row_mask
    return mask


def schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string()),
            pa.field("doc_id", pa.string()),
            pa.field("doc_key", pa.string()),
            pa.field("doc_hash", pa.string()),
            pa.field("source", pa.string()),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field("start", pa.int64()),
            pa.field("end", pa.int64()),
            pa.field("tenant", pa.string()),
            pa.field("version", pa.string()),
            pa.field("metadata", pa.string()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


class ChunkStore:
    """Read and write the chunk table of one workspace."""

    def __init__(self, workspace: Workspace | str | os.PathLike[str], table: str = TABLE):
        """`table` names a level of the index: "chunks" (what ingest writes), or a derived level such as the
        sentences or document summaries of `ragtune.index.levels`, which share the schema and the embedder."""
        import lancedb

        self.name = table
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.workspace.lancedb_dir.mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(str(self.workspace.lancedb_dir))
        self._table: Any = None
        self.latest_check_seconds = 1.0
        self._latest_checked = time.monotonic()  # a table opened now is the latest

    # -- table lifecycle -------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self._try_open() is not None

    def _try_open(self) -> Any:
        try:
            return self.db.open_table(self.name)
        except (FileNotFoundError, ValueError):
            return None

    @property
    def table(self) -> Any:
        if self._table is None:
            self._table = self._try_open()
            if self._table is None:
                raise FileNotFoundError(
                    f"No index in workspace {self.workspace.root}: run `ragtune ingest PATH --workspace "
                    f"{self.workspace.root}` first."
                )
        return self._table

    def level_names(self) -> list[str]:
        """The derived levels (tables other than the chunk table) this workspace's index holds, sorted."""
        names: list[str] = []
        token = None
        while True:
            page = self.db.list_tables(page_token=token)
            names.extend(page.tables)
            token = page.page_token
            if not token:
                break
        return sorted(n for n in names if n != TABLE)

    def create(self, dim: int) -> None:
        if self._try_open() is None:
            self._table = self.db.create_table(self.name, schema=schema(dim))

    def drop(self) -> None:
        if self._try_open() is not None:
            self.db.drop_table(self.name)
        self._table = None

    @property
    def bm25_dir(self) -> Path:
        """Where this level's BM25 index is saved (the chunk level keeps the workspace's historical folder)."""
        return self.workspace.bm25_dir if self.name == TABLE else self.workspace.index_dir / f"bm25-{self.name}"

    def checkout_latest(self, force: bool = False) -> None:
        """Move to the newest table version another process committed (`ragtune ingest` beside a running server or
        notebook); LanceDB keeps an opened table at the version it opened. Looked up at most once every
        `latest_check_seconds` (~0.5 ms each) unless forced."""
        now = time.monotonic()
        if not force and now - self._latest_checked < self.latest_check_seconds:
            return
        self._latest_checked = now
        table = self.table
        if hasattr(table, "checkout_latest"):
            table.checkout_latest()

    @property
    def version(self) -> int:
        self.checkout_latest()
        return int(self.table.version)

    def count(self, filters: dict[str, str] | None = None) -> int:
        return int(self.table.count_rows(filter_sql(filters)))

    # -- writes ----------------------------------------------------------------------------------------------------
    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray, doc_keys: dict[str, str]) -> None:
        """Add chunks in one atomic commit. `doc_keys` maps doc_id to the key that marks it as indexed."""
        if not chunks:
            return
        rows = {
            "chunk_id": [c.chunk_id for c in chunks],
            "doc_id": [c.doc_id for c in chunks],
            "doc_key": [doc_keys[c.doc_id] for c in chunks],
            "doc_hash": [c.doc_hash for c in chunks],
            "source": [c.source for c in chunks],
            "title": [c.title for c in chunks],
            "text": [c.text for c in chunks],
            "start": [c.start for c in chunks],
            "end": [c.end for c in chunks],
            "tenant": [c.tenant for c in chunks],
            "version": [c.version for c in chunks],
            "metadata": [json.dumps(c.metadata, ensure_ascii=False, default=str) for c in chunks],
            "tags": [chunk_tags(c) for c in chunks],
        }
        dim = vectors.shape[1]
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        arrays = [pa.array(v, type=schema(dim).field(k).type) for k, v in rows.items()]
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, dim))
        self.table.add(pa.Table.from_arrays(arrays, schema=schema(dim)))

    def delete_docs(self, doc_ids: Iterable[str], batch: int = 500) -> int:
        ids = sorted(set(doc_ids))
        for i in range(0, len(ids), batch):
            quoted = ", ".join(sql_string(d) for d in ids[i : i + batch])
            self.table.delete(f"doc_id IN ({quoted})")
        return len(ids)

    def compact(self) -> None:
        """Merge the small fragments that per-batch commits leave behind, and drop old versions' files."""
        # Optimisation is an optional speed-up; never fail an ingest over it.
        with contextlib.suppress(Exception):
            self.table.optimize()

    # -- reads -----------------------------------------------------------------------------------------------------
    def scan(self, columns: list[str], filters: dict[str, str] | None = None) -> pa.Table:
        query = self.table.search().select(columns).limit(None)
        where = filter_sql(filters)
        if where:
            query = query.where(where)
        return query.to_arrow()

    def indexed_docs(self) -> dict[str, tuple[set[str], str]]:
        """doc_id -> (doc keys present, source). A doc with more than one key was interrupted mid-update."""
        out: dict[str, tuple[set[str], str]] = {}
        if self._try_open() is None:
            return out
        table = self.scan(["doc_id", "doc_key", "source"])
        for doc_id, key, source in zip(
            table["doc_id"].to_pylist(), table["doc_key"].to_pylist(), table["source"].to_pylist(), strict=True
        ):
            entry = out.setdefault(doc_id, (set(), source))
            entry[0].add(key)
        return out

    def catalog(self, with_vectors: bool = False) -> pa.Table:
        """Every chunk's fields (and optionally vectors) in a stable order (by chunk id): the row order shared by
        the lexical index, the in-memory vectors and the filter masks."""
        table = self.scan(CATALOG_COLUMNS + SCOPE_COLUMNS + (["vector"] if with_vectors else []))
        return table.sort_by("chunk_id") if table.num_rows else table

    def read_chunks(self, filters: dict[str, str] | None = None) -> list[Chunk]:
        """All chunks (optionally filtered) as records, for the stages that build datasets from the index."""
        table = self.scan([*CATALOG_COLUMNS, "doc_hash", "tenant", "version"], filters)
        return [row_to_chunk(row) for row in table.sort_by("chunk_id").to_pylist()] if table.num_rows else []

    def dense_search(
        self, vector: np.ndarray, k: int, filters: dict[str, str] | None = None
    ) -> list[tuple[str, float]]:
        """(chunk_id, cosine similarity) of the k nearest chunks that pass the filters (applied before top-k)."""
        query = self.table.search(np.asarray(vector, dtype=np.float32)).metric("cosine").limit(k)
        where = filter_sql(filters)
        if where:
            query = query.where(where, prefilter=True)
        result = query.select(["chunk_id", "_distance"]).to_arrow()
        ids = result["chunk_id"].to_pylist()
        dists = result["_distance"].to_pylist()
        return [(cid, 1.0 - float(d)) for cid, d in zip(ids, dists, strict=True)]


def row_to_chunk(row: dict[str, Any]) -> Chunk:
    return Chunk(
        chunk_id=row["chunk_id"],
        doc_id=row["doc_id"],
        text=row["text"],
        start=row["start"],
        end=row["end"],
        source=row["source"],
        title=row.get("title") or "",
        doc_hash=row.get("doc_hash") or "",
        tenant=row.get("tenant"),
        version=row.get("version"),
        metadata=json.loads(row["metadata"]) if row.get("metadata") else {},
    )
