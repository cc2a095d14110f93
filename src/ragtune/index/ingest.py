"""Parse, chunk, embed and index documents, incrementally and crash-safely.

The chunk table is the record of what is indexed: every chunk row carries its document's `doc_key` (a hash of the
document's content, of the chunker settings and, when set, of its tenant and version) and its typed tenant and
version columns. A run therefore
- skips a document whose key is already in the table with the same tenant and version (unchanged: not re-embedded),
- deletes and re-adds a document whose key, tenant or version differs (changed text or chunker settings, or the same
  file ingested again under another `--tenant` / `--version`: it moves, its old tenant's chunks go),
- deletes documents that vanished from the paths it was given (removed files, records gone from a data set),
- commits whole documents at a time (about 1k chunks per commit), so after Ctrl-C or `kill -9` the same command
  resumes where it stopped: a document is either fully in the table (skipped next time) or absent (indexed next
  time), never half or twice.
A document longer than `part_chars` (1M characters by default) is cut at deterministic boundaries
(`ragtune.corpus.chunkers.split_parts`) into sub-documents `doc_id#partNNNNN`, each with its own key and committed
whole: memory stays bounded, a kill -9 inside it loses at most the part in flight, and a rerun skips the parts
already there. Huge documents go after all the others, so one 50 MB file never holds back the small ones.
One bad document never ends the run: a file that cannot be read, or a document that cannot be chunked or stored,
is one warning and the rest is indexed.
The BM25 index is rebuilt from the table at the end, and lazily by search if a run was cut short.

The key of a document with no tenant and no version is the key earlier releases wrote, and a row with that older key
counts as unchanged when its tenant and version columns match: upgrading re-embeds nothing. Keys carry the tenant
because the derived levels (`ragtune.index.levels`) follow the key alone: a moved document's sentences and
summary must move with it.
The manifest keeps `extra.roots`, the folders ingested into this workspace (a file argument's folder), accumulated
across runs (reset by `--rebuild`), so serve shows a source relative to its root (`ragtune.serve.scope`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.config import IngestConfig
from ragtune.corpus.chunkers import BaseChunker, Span, TokenizerAdapter, make_chunker, split_parts
from ragtune.corpus.loaders import LoadOptions, LoadReport, load_paths, printable
from ragtune.hashing import short_id, text_hash
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
    parts_added: int = 0  # parts of huge documents committed by this run
    failed: int = 0  # documents that could not be chunked or stored (each one warning)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # load, chunk, embed, store, compact, lexical
    levels: dict[str, int] = field(default_factory=dict)  # derived level (sentences, summaries) -> rows

    @property
    def warned(self) -> int:
        return len(self.warnings)


@dataclass
class _Indexed:
    """What the table holds of one document: its keys (more than one: an interrupted update), source, and the
    (tenant, version) pairs of its rows."""

    keys: set[str]
    source: str
    scopes: set[tuple[str | None, str | None]]


def _indexed_docs(store: ChunkStore) -> dict[str, _Indexed]:
    """doc_id -> what is indexed of it, in one scan of the table."""
    table = store.scan(["doc_id", "doc_key", "source", "tenant", "version"])
    out: dict[str, _Indexed] = {}
    for doc_id, key, source, tenant, version in zip(
        *(table[c].to_pylist() for c in ("doc_id", "doc_key", "source", "tenant", "version")), strict=True
    ):
        entry = out.get(doc_id)
        if entry is None:
            entry = out[doc_id] = _Indexed(set(), source, set())
        entry.keys.add(key)
        entry.scopes.add((tenant, version))
    return out


def _doc_key(content_hash: str, signature: str, tenant: str | None, version: str | None) -> str:
    """The key marking a document as indexed. Without tenant and version it is the key earlier releases wrote, so
    an existing index stays valid; with them, a document moved to another tenant gets a new key, which is what the
    derived levels compare."""
    if tenant is None and version is None:
        return short_id(content_hash, signature)
    return short_id(content_hash, signature, "scope=" + json.dumps([tenant, version]))


def _display_roots(paths: Sequence[Path]) -> list[str]:
    """The resolved folders the given paths name (a file's own folder), for serve's source names. A path that cannot
    be resolved or does not exist adds nothing; the loader already warns about it."""
    out: list[str] = []
    for path in paths:
        try:
            resolved = path.resolve()
            root = resolved if resolved.is_dir() else resolved.parent if resolved.exists() else None
        except (OSError, RuntimeError):  # unreadable, or a symlink loop
            continue
        if root is not None:
            out.append(str(root))
    return out


def _previous_roots(ws: Workspace) -> list[str]:
    """The roots the last ingest manifest recorded; an unreadable or older manifest has none."""
    try:
        manifest = ws.read_manifest("ingest") or {}
    except (OSError, ValueError):
        return []
    extra = manifest.get("extra") if isinstance(manifest, dict) else None
    roots = extra.get("roots") if isinstance(extra, dict) else None
    return [r for r in roots if isinstance(r, str)] if isinstance(roots, list) else []


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


PART_SEP = "#part"


@dataclass
class _Part:
    """One part of a huge document still to be indexed: its span in the document, sub-document id, hash and key."""

    number: int
    span: Span
    doc_id: str
    content_hash: str
    key: str


def _part_hash(text: str, span: Span) -> str:
    # The start offset is part of the hash: chunk offsets are the document's, so a part that moved is a new part.
    return text_hash(f"{span[0]}\x1f{text[span[0] : span[1]]}")


def _part_document(doc: Document, part: _Part) -> Document:
    s, e = part.span
    return Document(
        doc_id=part.doc_id, text=doc.text[s:e], source=doc.source, title=doc.title, modified=doc.modified,
        content_hash=part.content_hash, tenant=doc.tenant, version=doc.version,
        metadata={**doc.metadata, "part": part.number},
    )


def _chunk_part(chunker: BaseChunker, doc: Document, part: _Part) -> list[Chunk]:
    """The part's chunks with offsets into the whole document, so `doc.text[c.start:c.end] == c.text` still holds."""
    chunks = chunker.chunk(_part_document(doc, part))
    for c in chunks:
        c.start += part.span[0]
        c.end += part.span[0]
    return chunks


class _Committer:
    """Embeds and stores groups of documents' chunks, one atomic add per group. A group that fails is retried one
    document at a time, so a document the tokenizer or the table refuses (e.g. lone surrogates from a JSON escape)
    costs only itself: one warning. Failures with no success at all are a broken setup, not a bad document: raised."""

    def __init__(self, store: ChunkStore, embedder: Embedder, settings: IndexSettings, stale: set[str],
                 summary: IngestSummary, report: LoadReport, progress: ProgressCallback | None):
        self.store, self.embedder, self.settings, self.stale = store, embedder, settings, stale
        self.summary, self.report, self.progress = summary, report, progress
        self.done = 0
        self.total = 0
        self.stored = 0

    def _add(self, group: list[tuple[list[Chunk], str]]) -> int:
        chunks = [c for cs, _ in group for c in cs]
        keys = {cs[0].doc_id: key for cs, key in group if cs}
        t0 = time.perf_counter()
        vectors = self.embedder.encode([index_text(c.title, c.text, self.settings.embed_title) for c in chunks])
        self.summary.embed_seconds += time.perf_counter() - t0
        # A changed document's old chunks go first; if we die right after, the document is simply absent and the
        # next run adds it again.
        t_store = time.perf_counter()
        self.store.delete_docs([d for d in keys if d in self.stale])
        self.store.add(chunks, vectors, keys)
        stages = self.summary.stage_seconds
        stages["store"] = stages.get("store", 0.0) + time.perf_counter() - t_store
        return len(chunks)

    def commit(self, group: list[tuple[list[Chunk], str]]) -> None:
        group = [(cs, key) for cs, key in group if cs]
        if not group:
            return
        try:
            added = self._add(group)
            self.stored += len(group)
        except Exception:  # noqa: BLE001 - find the one document at fault; re-raised below if none is
            added = 0
            for item in group:
                try:
                    added += self._add([item])
                    self.stored += 1
                except Exception as exc:  # noqa: BLE001
                    if self.stored == 0 and self.summary.failed >= 4:
                        raise
                    self.summary.failed += 1
                    first = item[0][0]
                    self.report.warn(f"{first.source}: document {first.doc_id} skipped: could not be indexed "
                                     f"({type(exc).__name__}: {str(exc)[:200]})")
        self.done += sum(len(cs) for cs, _ in group)
        self.summary.chunks_added += added
        if self.progress:
            self.progress(self.done, self.total)


def _safe_chunk(chunk: Callable[[], list[Chunk]], doc: Document, summary: IngestSummary,
                report: LoadReport) -> list[Chunk]:
    try:
        return chunk()
    except Exception as exc:  # noqa: BLE001 - one document the chunker cannot handle must not end the run
        summary.failed += 1
        report.warn(f"{doc.source}: document {doc.doc_id} skipped: could not be chunked ({type(exc).__name__}: "
                    f"{str(exc)[:200]})")
        return []


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
    display_roots = list(dict.fromkeys([*([] if rebuild else _previous_roots(ws)), *_display_roots(path_list)]))
    store = ChunkStore(ws)
    embedder = embedder or Embedder(config.embedder, device=config.device, batch_size=config.batch_size)
    settings = _check_settings(ws, store, embedder, rebuild)
    tokenizer = TokenizerAdapter(embedder.tokenizer, embedder.max_tokens)
    chunker = make_chunker(config.chunker, tokenizer, config.chunk_size, config.overlap, embed=embedder.encode)
    signature = f"{chunker.signature()}|title={settings.embed_title}"
    part_signature = f"{signature}|parts={config.part_chars}"

    summary = IngestSummary()
    report = LoadReport()
    indexed = _indexed_docs(store)
    loaded: set[str] = set()  # document ids loaded (duplicates are dropped)
    seen: set[str] = set()  # ids that stay in the index: documents, or the parts of huge ones
    pending: list[tuple[Document, str]] = []  # (document, doc_key)
    huge: list[tuple[Document, list[_Part]]] = []  # huge documents and the parts of each still to index
    stale: set[str] = set()

    def status(doc_id: str, key: str, legacy: str, doc: Document) -> str:
        present = indexed.get(doc_id)
        # `legacy`: the key written before keys carried the tenant; the tenant and version columns decide for it.
        if present is not None and present.keys in ({key}, {legacy}) and present.scopes == {(doc.tenant, doc.version)}:
            return "unchanged"
        if present is not None:
            stale.add(doc_id)
            return "updated"
        return "new"

    for doc in load_paths(path_list, _load_options(config), report):
        if doc.doc_id in loaded:
            summary.duplicates += 1
            continue
        loaded.add(doc.doc_id)
        if len(doc.text) <= config.part_chars:
            seen.add(doc.doc_id)
            key = _doc_key(doc.content_hash, signature, doc.tenant, doc.version)
            state = status(doc.doc_id, key, short_id(doc.content_hash, signature), doc)
            setattr(summary, state, getattr(summary, state) + 1)
            if state != "unchanged":
                pending.append((doc, key))
            continue
        todo: list[_Part] = []
        states = set()
        for number, span in enumerate(split_parts(doc.text, config.part_chars)):
            part_id = f"{doc.doc_id}{PART_SEP}{number:05d}"
            content_hash = _part_hash(doc.text, span)
            key = _doc_key(content_hash, part_signature, doc.tenant, doc.version)
            seen.add(part_id)
            state = status(part_id, key, short_id(content_hash, part_signature), doc)
            states.add(state)
            if state != "unchanged":
                todo.append(_Part(number, span, part_id, content_hash, key))
        # A huge document counts once: unchanged if every part is, new if none was there, else updated.
        state = "unchanged" if states == {"unchanged"} else "new" if states == {"new"} else "updated"
        setattr(summary, state, getattr(summary, state) + 1)
        if todo:
            huge.append((doc, todo))

    kept_folders = [Path(f) for f in report.failed_folders]
    removed = [
        doc_id
        for doc_id, entry in indexed.items()
        if doc_id not in seen and _under(entry.source, roots) and entry.source not in report.failed_sources
        and not (kept_folders and _under(entry.source, kept_folders))  # a folder we could not list keeps its documents
    ]
    if removed:
        summary.removed = store.delete_docs(removed)

    summary.stage_seconds["load"] = time.perf_counter() - started
    t_chunk = time.perf_counter()
    chunked = [(_safe_chunk(functools.partial(chunker.chunk, doc), doc, summary, report), key) for doc, key in pending]
    del pending
    summary.stage_seconds["chunk"] = time.perf_counter() - t_chunk
    # Embed documents in order of chunk length, longest first, as SentenceTransformer.encode orders texts: each
    # commit group then holds texts of similar length and batches carry little padding. Commits stay whole
    # documents, so the order changes nothing but speed (measured: see benchmarks/retrieval.py).
    chunked.sort(key=lambda item: -max((len(c.text) + len(c.title) for c in item[0]), default=0))
    committer = _Committer(store, embedder, settings, stale, summary, report, progress)
    # Parts are not chunked yet: count them at ~4 characters a token until they are.
    estimate = {id(p): max(1, (p.span[1] - p.span[0]) // (4 * config.chunk_size)) for _, ps in huge for p in ps}
    committer.total = sum(len(chunks) for chunks, _ in chunked) + sum(estimate.values())
    if progress:
        progress(0, committer.total)
    group: list[tuple[list[Chunk], str]] = []
    for item in chunked:
        group.append(item)
        if sum(len(cs) for cs, _ in group) >= config.commit_every:
            committer.commit(group)
            group = []
    committer.commit(group)
    del chunked, group

    # Huge documents last, one part per commit; a document's text is released once its parts are in.
    while huge:
        doc, todo = huge.pop(0)
        for part in todo:
            t_part = time.perf_counter()
            chunks = _safe_chunk(functools.partial(_chunk_part, chunker, doc, part), doc, summary, report)
            summary.stage_seconds["chunk"] += time.perf_counter() - t_part
            committer.total += len(chunks) - estimate.pop(id(part))
            before = summary.chunks_added
            committer.commit([(chunks, part.key)])
            summary.parts_added += int(summary.chunks_added > before)
        del doc, todo

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
        if wanted:  # derived levels for small-to-big retrieval and routing (ragtune.index.levels)
            from ragtune.index.levels import build_level

            built = build_level(ws, level, config.summary_model, embedder=embedder)
            summary.levels[level] = built.rows_total
            summary.stage_seconds[level] = built.seconds

    summary.files_loaded = report.files_loaded
    summary.documents = report.documents
    summary.skipped = report.skipped
    summary.warnings = [printable(w) for w in report.warnings]
    summary.chunks_total = store.count()
    summary.seconds = time.perf_counter() - started
    _write_manifest(ws, report, config, summary, display_roots)
    return summary


def _write_manifest(ws: Workspace, report: LoadReport, config: IngestConfig, summary: IngestSummary,
                    roots: list[str]) -> None:
    manifest = Manifest(
        stage="ingest",
        inputs=dict(report.inputs),  # sha256 of each file's bytes as the loader read them: no second read
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
            "parts_added": summary.parts_added,
            "failed": summary.failed,
            "warnings": len(summary.warnings),
        },
        timings={"total_s": summary.seconds, **{f"{k}_s": v for k, v in summary.stage_seconds.items()}},
        extra={"skipped": summary.skipped, "warnings": summary.warnings[:200], "roots": roots},
    )
    ws.write_manifest(manifest)
