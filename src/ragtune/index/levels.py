"""Derived levels of the index: one row per sentence (small-to-big retrieval) and one summary per document.

They belong to the index (ingest builds them, `ragtune.retrieve` searches them). Each level is its own LanceDB
table in the workspace, with the chunk table's schema (so the same first stage, `IndexSearcher`, does dense / BM25 /
hybrid search and metadata filters on it) and rows derived from the chunk table:
- `sentences`: chunk id `<parent chunk id>#s<ordinal>`; `start` / `end` are offsets in the document, `ordinal`
  (metadata) counts sentences through the whole document, so a window of N sentences crosses chunk borders;
- `summaries`: chunk id `<doc id>#summary`; extractive (the document's lead sentences: instant, and the lead of an
  encyclopedia or news article is a strong summary) or written by an LLM (about 60 tokens a document: on a CPU
  with the bundled 135M model that is hours for 10k documents, so extractive is the default).
A level is synchronised with the chunk table document by document, like ingest: rows carry their document's key
plus the level's settings, unchanged documents are skipped, changed ones replaced, removed ones deleted, and each
commit holds whole documents, so an interrupted build resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ragtune.corpus.chunkers import sentence_spans
from ragtune.hashing import short_id
from ragtune.index.embedding import Embedder
from ragtune.index.search import build_lexical
from ragtune.index.settings import IndexSettings, index_text
from ragtune.index.store import ChunkStore
from ragtune.records import Chunk
from ragtune.workspace import Workspace

SENTENCES = "sentences"
SUMMARIES = "summaries"
SENTENCE_SEP = "#s"
SUMMARY_SUFFIX = "#summary"
LEAD_WORDS = 60


@dataclass
class LevelSummary:
    level: str
    documents: int = 0
    rows_added: int = 0
    removed: int = 0
    rows_total: int = 0
    seconds: float = 0.0


def parent_chunk_id(sentence_id: str) -> str:
    return sentence_id.rsplit(SENTENCE_SEP, 1)[0]


def _by_document(chunks: Iterable[Chunk]) -> dict[str, list[Chunk]]:
    docs: dict[str, list[Chunk]] = {}
    for c in chunks:
        docs.setdefault(c.doc_id, []).append(c)
    for parts in docs.values():
        parts.sort(key=lambda c: c.start)
    return docs


def sentence_rows(chunks: list[Chunk]) -> list[Chunk]:
    """One row per sentence of a document's chunks (in document order), each pointing at its parent chunk."""
    rows: list[Chunk] = []
    last_end = -1
    for chunk in chunks:
        for s, e in sentence_spans(chunk.text):
            start, end = chunk.start + s, chunk.start + e
            if start < last_end:  # overlapping chunks repeat sentences: keep the first occurrence
                continue
            last_end = end
            rows.append(chunk.model_copy(update={
                "chunk_id": f"{chunk.chunk_id}{SENTENCE_SEP}{len(rows):04d}", "text": chunk.text[s:e],
                "start": start, "end": end,
                "metadata": {**chunk.metadata, "parent_chunk": chunk.chunk_id, "ordinal": len(rows)},
            }))
    return rows


def lead_summary(chunks: list[Chunk], words: int = LEAD_WORDS) -> str:
    """The document's first sentences, up to about `words` words (always at least one sentence)."""
    out: list[str] = []
    count = 0
    for chunk in chunks:
        for s, e in sentence_spans(chunk.text):
            sentence = chunk.text[s:e]
            if out and count + len(sentence.split()) > words:
                return " ".join(out)
            out.append(sentence)
            count += len(sentence.split())
    return " ".join(out)


def llm_summaries(model: str, docs: list[list[Chunk]], batch_size: int = 8) -> list[str]:
    from ragtune.llm import GenerationConfig, load_llm

    llm = load_llm(model or None)  # "" means the bundled generator, as for every retrieval-stage model
    conversations = [[{"role": "user", "content": "Summarise this document in one or two sentences. Reply with the "
                       f"summary only.\n\nTitle: {d[0].title}\n\n" + " ".join(c.text for c in d)[:2000]}]
                     for d in docs]
    generations = llm.generate(conversations, GenerationConfig(max_new_tokens=60), batch_size=batch_size)
    return [g.text.strip() or lead_summary(d) for g, d in zip(generations, docs, strict=True)]


def summary_row(chunks: list[Chunk], text: str, how: str) -> Chunk:
    first = chunks[0]
    return first.model_copy(update={
        "chunk_id": f"{first.doc_id}{SUMMARY_SUFFIX}", "text": text, "start": first.start, "end": chunks[-1].end,
        "metadata": {**first.metadata, "summary": how},
    })


def build_level(workspace: Workspace | str, level: str, summary_model: str | None = None,
                embedder: Embedder | None = None, commit_every: int = 2048,
                progress: Callable[[int, int], None] | None = None) -> LevelSummary:
    """Bring one level in line with the chunk table (see the module docstring). Safe to interrupt and rerun."""
    if level not in (SENTENCES, SUMMARIES):
        raise ValueError(f"unknown index level {level!r}")
    started = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    settings = IndexSettings.load(ws)
    if settings is None:
        raise FileNotFoundError(f"No index in workspace {ws.root}: run `ragtune ingest` first.")
    main = ChunkStore(ws)
    store = ChunkStore(ws, level)
    how = "extractive" if level == SUMMARIES and not summary_model else (summary_model or "")
    docs = _by_document(main.read_chunks())
    keys = {d: short_id(k, level, how) for d, k in _doc_keys(main).items()}
    store.create(settings.dim)
    present = store.indexed_docs()
    result = LevelSummary(level=level)
    gone = [d for d in present if d not in docs]
    changed = [d for d, (k, _) in present.items() if d in docs and k != {keys[d]}]
    if gone or changed:
        result.removed = store.delete_docs(gone + changed)
    todo = [d for d in docs if d in changed or d not in present]
    embedder = embedder or Embedder(settings.embedder)
    done = 0
    # documents per commit: about `commit_every` rows (a paragraph has a few sentences); an LLM summary is slow,
    # so its commits are small and an interrupted build loses little
    step = max(1, commit_every // 8 if level == SENTENCES else 64 if summary_model else commit_every)
    for i in range(0, len(todo), step):
        batch = todo[i : i + step]
        if level == SENTENCES:
            rows = [r for d in batch for r in sentence_rows(docs[d])]
        else:
            texts = (llm_summaries(summary_model, [docs[d] for d in batch]) if summary_model
                     else [lead_summary(docs[d]) for d in batch])
            rows = [summary_row(docs[d], t, how) for d, t in zip(batch, texts, strict=True)]
        vectors = embedder.encode([index_text(r.title, r.text, settings.embed_title) for r in rows])
        store.add(rows, vectors, {d: keys[d] for d in batch})
        result.rows_added += len(rows)
        done += len(batch)
        if progress:
            progress(done, len(todo))
    if todo or gone or changed:
        store.compact()
        build_lexical(store, settings).save(store.bm25_dir, store.version)
    result.documents = len(docs)
    result.rows_total = store.count()
    result.seconds = time.perf_counter() - started
    return result


def _doc_keys(store: ChunkStore) -> dict[str, str]:
    table = store.scan(["doc_id", "doc_key"])
    return dict(zip(table["doc_id"].to_pylist(), table["doc_key"].to_pylist(), strict=True))


def has_level(workspace: Workspace | str, level: str) -> bool:
    return ChunkStore(workspace, level).exists()
