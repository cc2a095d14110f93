"""Parse, chunk, embed and index documents, incrementally and crash-safely.

The chunk table is the record of what is indexed: every chunk row carries its document's `doc_key` (a hash of the
document's content and of the chunker settings). A run therefore
- skips a document whose key is already in the table (unchanged: not re-embedded),
- deletes and re-adds a document whose key differs (changed text or chunker settings),
- deletes documents that vanished from the paths it was given (removed files, records gone from a data set),
- commits whole documents at a time (about 1k chunks per commit), so after Ctrl-C or `kill -9` the same command
  resumes where it stopped: a document is either fully in the table (skipped next time) or absent (indexed next
  time), never half or twice.
The BM25 index is rebuilt from the table at the end, and lazily by search if a run was cut short.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.config import IngestConfig
from ragtune.corpus.chunkers import TokenizerAdapter, make_chunker
from ragtune.corpus.loaders import LoadOptions, LoadReport, iter_files, load_paths
from ragtune.hashing import file_hash, short_id
from ragtune.index.embedding import Embedder
from ragtune.index.search import build_lexical
from ragtune.index.settings import IndexMismatchError, IndexSettings, index_text
from ragtune.index.store import ChunkStore
from ragtune.records import Chunk, Document
from ragtune.workspace import Manifest, Workspace

ProgressCallback = Callable[[int, int], None]  # (chunks done, chunks total)


@dataclass
class IngestSummary:
    files_loaded: int = 0
    documents: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    duplicates: int = 0
    chunks_added: int = 0
    chunks_total: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # load, chunk, embed, store, compact, lexical
    levels: dict[str, int] = field(default_factory=dict)  # derived level (sentences, summaries) -> rows


def _under(source: str, roots: Sequence[Path]) -> bool:
    return any(source == str(root) or source.startswith(str(root) + os.sep) for root in roots)


def _load_options(config: IngestConfig) -> LoadOptions:
    return LoadOptions(
        format=config.format,
        text_field=config.text_field,
        id_field=config.id_field,
        title_field=config.title_field,
        metadata_fields=config.metadata_fields,
        tenant=config.tenant,
        version=config.version,
    )


def _check_settings(ws: Workspace, store: ChunkStore, embedder: Embedder, rebuild: bool) -> IndexSettings:
    wanted = IndexSettings(embedder=embedder.resolved.reference, dim=embedder.dim)
    existing = IndexSettings.load(ws)
    if existing is not None and rebuild:
        store.drop()
        existing = None
    if existing is not None and (existing.embedder != wanted.embedder or existing.dim != wanted.dim):
        raise IndexMismatchError(
            f"The index in {ws.root} was built with embedder {existing.embedder!r}; this run uses "
            f"{wanted.embedder!r}. Pass --rebuild to re-embed everything with the new one, or use another workspace."
        )
    store.create(wanted.dim)
    wanted.save(ws)
    return wanted


def ingest(
    paths: Iterable[str | os.PathLike[str]],
    workspace: Workspace | str | os.PathLike[str],
    config: IngestConfig | None = None,
    rebuild: bool = False,
    progress: ProgressCallback | None = None,
    embedder: Embedder | None = None,
) -> IngestSummary:
    """Bring the workspace index in line with the documents under `paths`. Safe to interrupt and run again."""
    started = time.perf_counter()
    config = config or IngestConfig()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ws.ensure()
    path_list = [Path(p) for p in paths]
    roots = [p.resolve() for p in path_list]
    store = ChunkStore(ws)
    embedder = embedder or Embedder(config.embedder, device=config.device, batch_size=config.batch_size)
    settings = _check_settings(ws, store, embedder, rebuild)
    tokenizer = TokenizerAdapter(embedder.tokenizer, embedder.max_tokens)
    chunker = make_chunker(config.chunker, tokenizer, config.chunk_size, config.overlap, embed=embedder.encode)
    signature = f"{chunker.signature()}|title={settings.embed_title}"

    summary = IngestSummary()
    report = LoadReport()
    indexed = store.indexed_docs()
    seen: set[str] = set()
    pending: list[tuple[Document, str]] = []  # (document, doc_key)
    stale: set[str] = set()
    for doc in load_paths(path_list, _load_options(config), report):
        if doc.doc_id in seen:
            summary.duplicates += 1
            continue
        seen.add(doc.doc_id)
        key = short_id(doc.content_hash, signature)
        present = indexed.get(doc.doc_id)
        if present is not None and present[0] == {key}:
            summary.unchanged += 1
            continue
        if present is not None:
            stale.add(doc.doc_id)
            summary.updated += 1
        else:
            summary.new += 1
        pending.append((doc, key))

    removed = [
        doc_id
        for doc_id, (_keys, source) in indexed.items()
        if doc_id not in seen and _under(source, roots) and source not in report.failed_sources
    ]
    if removed:
        summary.removed = store.delete_docs(removed)

    summary.stage_seconds["load"] = time.perf_counter() - started
    t_chunk = time.perf_counter()
    chunked: list[tuple[list[Chunk], str]] = [(chunker.chunk(doc), key) for doc, key in pending]
    summary.stage_seconds["chunk"] = time.perf_counter() - t_chunk
    # Embed documents in order of chunk length, longest first, as SentenceTransformer.encode orders texts: each
    # commit group then holds texts of similar length and batches carry little padding. Commits stay whole
    # documents, so the order changes nothing but speed (measured: see benchmarks/retrieval.py).
    chunked.sort(key=lambda item: -max((len(c.text) + len(c.title) for c in item[0]), default=0))
    total = sum(len(chunks) for chunks, _ in chunked)
    done = 0
    if progress:
        progress(0, total)
    group: list[tuple[list[Chunk], str]] = []

    def commit() -> None:
        nonlocal done
        chunks = [c for cs, _ in group for c in cs]
        keys = {cs[0].doc_id: key for cs, key in group if cs}
        t0 = time.perf_counter()
        vectors = embedder.encode([index_text(c.title, c.text, settings.embed_title) for c in chunks])
        summary.embed_seconds += time.perf_counter() - t0
        # A changed document's old chunks go first; if we die right after, the document is simply absent and the
        # next run adds it again.
        t_store = time.perf_counter()
        store.delete_docs([d for d in keys if d in stale])
        store.add(chunks, vectors, keys)
        summary.stage_seconds["store"] = summary.stage_seconds.get("store", 0.0) + time.perf_counter() - t_store
        done += len(chunks)
        summary.chunks_added += len(chunks)
        group.clear()
        if progress:
            progress(done, total)

    for chunks, key in chunked:
        group.append((chunks, key))
        if sum(len(cs) for cs, _ in group) >= config.commit_every:
            commit()
    if group:
        commit()

    t_compact = time.perf_counter()
    if summary.chunks_added or summary.removed:
        store.compact()
    t_lexical = time.perf_counter()
    lexical = build_lexical(store, settings)
    lexical.save(ws.bm25_dir, store.version)
    summary.stage_seconds["compact"] = t_lexical - t_compact
    summary.stage_seconds["lexical"] = time.perf_counter() - t_lexical
    summary.stage_seconds["embed"] = summary.embed_seconds
    for level, wanted in (("sentences", config.sentences), ("summaries", config.summaries)):
        if wanted:  # derived levels for small-to-big retrieval and routing (ragtune.retrieve.levels)
            from ragtune.retrieve.levels import build_level

            built = build_level(ws, level, config.summary_model, embedder=embedder)
            summary.levels[level] = built.rows_total
            summary.stage_seconds[level] = built.seconds

    summary.files_loaded = report.files_loaded
    summary.documents = report.documents
    summary.skipped = report.skipped
    summary.warnings = report.warnings
    summary.chunks_total = store.count()
    summary.seconds = time.perf_counter() - started
    _write_manifest(ws, path_list, config, summary)
    return summary


def _write_manifest(ws: Workspace, paths: Sequence[Path], config: IngestConfig, summary: IngestSummary) -> None:
    inputs = {}
    for path in iter_files(paths):
        if path.is_file():
            inputs[str(path.resolve())] = file_hash(path)
    manifest = Manifest(
        stage="ingest",
        inputs=inputs,
        config=config.model_dump(),
        counts={
            "files_loaded": summary.files_loaded,
            "files_skipped": len(summary.skipped),
            "documents": summary.documents,
            "new": summary.new,
            "updated": summary.updated,
            "unchanged": summary.unchanged,
            "removed": summary.removed,
            "chunks_added": summary.chunks_added,
            "chunks_total": summary.chunks_total,
            "warnings": len(summary.warnings),
        },
        timings={"total_s": summary.seconds, **{f"{k}_s": v for k, v in summary.stage_seconds.items()}},
        extra={"skipped": summary.skipped, "warnings": summary.warnings[:200]},
    )
    ws.write_manifest(manifest)
