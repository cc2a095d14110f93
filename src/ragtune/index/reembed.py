"""Re-embed every chunk of an index with another embedder, in place, incrementally and resumably.

After contrastive training both towers changed, so the stored document vectors are stale. Re-ingesting would re-read
and re-chunk every source; the chunk table already holds the exact texts, so only vectors are recomputed. Chunks go
in chunk-id order, about `commit_every` per commit (a LanceDB merge on chunk_id: one atomic commit), and a small
state file records how far it got, so a killed run resumes where it stopped. The index settings switch to the new
embedder only when every chunk is done; until then the old settings (and a warning-worthy state file) remain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from ragtune.index.embedding import Embedder
from ragtune.index.settings import IndexSettings, index_text
from ragtune.index.store import CATALOG_COLUMNS, TABLE, ChunkStore, schema
from ragtune.workspace import Workspace, write_json_atomic

STATE_FILE = "reembed.json"


def state_path(ws: Workspace) -> Path:
    return ws.index_dir / STATE_FILE


def reembed_index(
    workspace: Workspace | str | os.PathLike[str],
    embedder: Embedder,
    commit_every: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Replace every chunk vector by `embedder`'s; returns how many chunks were embedded by this call.

    Derived levels (sentence and summary tables of `ragtune ingest --sentences / --summaries`) are re-embedded too,
    after the chunks: they are searched with the same query encoder, so vectors left from the old model would be
    compared with new-model queries. Their texts are kept as they are (an LLM summary is not regenerated)."""
    from ragtune.index.search import build_lexical

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    settings = IndexSettings.load(ws)
    if settings is None:
        raise FileNotFoundError(f"No index in workspace {ws.root}: run `ragtune ingest` first.")
    if embedder.dim != settings.dim:
        raise ValueError(f"the new embedder makes {embedder.dim}-d vectors, the index holds {settings.dim}-d ones")
    reference = embedder.resolved.path if embedder.resolved.source == "local" else embedder.resolved.reference
    main = ChunkStore(ws)
    tables = [TABLE, *main.level_names()]
    state_file = state_path(ws)
    state: dict[str, str] = {}
    if state_file.exists():
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if state.get("embedder") != reference or state.get("table", TABLE) not in tables:
            state = {}
    resume_at = tables.index(state.get("table", TABLE)) if state else 0
    embedded = 0
    for position, name in enumerate(tables):
        if position < resume_at:
            continue  # finished by the interrupted run
        store = main if name == TABLE else ChunkStore(ws, name)
        done_through = state.get("done_through", "") if position == resume_at else ""
        count = _reembed_table(store, embedder, settings, reference, done_through, commit_every, state_file,
                               progress if name == TABLE else None)
        if name == TABLE:
            embedded = count
        if count or done_through:
            store.compact()
        build_lexical(store, settings).save(store.bm25_dir, store.version)
    IndexSettings(embedder=reference, dim=settings.dim, embed_title=settings.embed_title).save(ws)
    state_file.unlink(missing_ok=True)
    return embedded


def _reembed_table(store: ChunkStore, embedder: Embedder, settings: IndexSettings, reference: str,
                   done_through: str, commit_every: int, state_file: Path,
                   progress: Callable[[int, int], None] | None) -> int:
    """Re-embed one table in chunk-id order after `done_through`, one merge commit per `commit_every` rows."""
    columns = [*CATALOG_COLUMNS, "doc_hash", "tenant", "version"]
    table = store.scan(columns)
    table = table.sort_by("chunk_id") if table.num_rows else table
    ids = table["chunk_id"].to_pylist()
    start = sum(1 for cid in ids if cid <= done_through) if done_through else 0
    total = len(ids)
    if progress:
        progress(start, total)
    embedded = 0
    for lo in range(start, total, commit_every):
        part = table.slice(lo, min(commit_every, total - lo))
        texts = [
            index_text(t, x, settings.embed_title)
            for t, x in zip(part["title"].to_pylist(), part["text"].to_pylist(), strict=True)
        ]
        vectors = np.ascontiguousarray(embedder.encode(texts), dtype=np.float32)
        full = schema(settings.dim)
        arrays = [part[name].cast(full.field(name).type) for name in full.names if name != "vector"]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), settings.dim))
        rows = pa.Table.from_arrays(arrays, schema=full)
        store.table.merge_insert("chunk_id").when_matched_update_all().execute(rows)
        embedded += part.num_rows
        write_json_atomic(state_file, {"embedder": reference, "table": store.name,
                                       "done_through": ids[lo + part.num_rows - 1]})
        if progress:
            progress(lo + part.num_rows, total)
    return embedded
