"""Labelled QA data sets read as document corpora.

- HotpotQA (official format): one document per distinct paragraph (title + sentences), title kept, so retrieval can
  be scored against `supporting_facts` titles.
- SQuAD (1.1 / 2.0 JSON): one document per distinct context.
- NQ-oracle JSONL ("Lost in the Middle" release): one document per distinct gold passage.
- BEIR (`corpus.jsonl` of a BEIR folder, or `--format beir`): one document per line, under the line's `_id`.
- Generic QA JSONL (`--format qa-jsonl`): every document of every question (gold and distractors), read by the
  reader synthesis and evaluation use (`ragtune.datasets.generic`), with the same ids.

Document ids depend on the content (data set, title, text), not the file, so the same paragraph met in two files or
two questions is one document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ragtune.datasets.hotpotqa import doc_id as hotpotqa_doc_id
from ragtune.datasets.hotpotqa import paragraph_text as hotpotqa_paragraph_text
from ragtune.hashing import short_id, text_hash
from ragtune.records import Document


def _doc(dataset: str, title: str, text: str, path: Path, options: Any, **metadata: Any) -> Document:
    return Document(
        doc_id=short_id(dataset, title, text) if dataset != "hotpotqa" else hotpotqa_doc_id(title, text),
        text=text,
        source=str(path.resolve()),
        title=title,
        modified=path.stat().st_mtime,
        content_hash=text_hash(text),
        tenant=getattr(options, "tenant", None),
        version=getattr(options, "version", None),
        metadata={"format": dataset, **metadata},
    )


def load_hotpotqa(data: list[dict[str, Any]], path: Path, options: Any) -> Iterator[Document]:
    seen: set[tuple[str, str]] = set()
    for example in data:
        for title, sentences in example.get("context", []):
            text = hotpotqa_paragraph_text(sentences)
            if not text or (title, text) in seen:
                continue
            seen.add((title, text))
            yield _doc("hotpotqa", title, text, path, options)


def load_squad(data: dict[str, Any], path: Path, options: Any) -> Iterator[Document]:
    seen: set[str] = set()
    for article in data.get("data", []):
        title = str(article.get("title", "")).replace("_", " ")
        for paragraph in article.get("paragraphs", []):
            text = str(paragraph.get("context", "")).strip()
            if not text or text in seen:
                continue
            seen.add(text)
            yield _doc("squad", title, text, path, options)


def load_nq_rows(rows: Iterable[tuple[int, Any]], path: Path, options: Any) -> Iterator[Document]:
    seen: set[tuple[str, str]] = set()
    for _lineno, record in rows:
        for ctx in record.get("ctxs", []):
            if not ctx.get("isgold"):
                continue
            title, text = str(ctx.get("title", "")), str(ctx.get("text", "")).strip()
            if not text or (title, text) in seen:
                continue
            seen.add((title, text))
            yield _doc("nq", title, text, path, options)


def load_nq(data: list[dict[str, Any]], path: Path, options: Any) -> Iterator[Document]:
    yield from load_nq_rows(enumerate(data, start=1), path, options)


def load_qa_jsonl_rows(rows: Iterable[tuple[int, Any]], path: Path, options: Any) -> Iterator[Document]:
    """Each distinct document of a generic QA JSONL file, under the id evaluation scores retrieval against."""
    from ragtune.datasets.generic import items_from_rows

    seen: set[str] = set()
    for item in items_from_rows(rows, str(path)):
        for doc in item.documents():
            if doc.doc_id in seen:
                continue
            seen.add(doc.doc_id)
            yield Document(
                doc_id=doc.doc_id, text=doc.text, source=str(path.resolve()), title=doc.title,
                modified=path.stat().st_mtime, content_hash=text_hash(doc.text),
                tenant=getattr(options, "tenant", None), version=getattr(options, "version", None),
                metadata={"format": "qa-jsonl"},
            )


def load_beir_rows(rows: Iterable[tuple[int, Any]], path: Path, options: Any) -> Iterator[Document]:
    """The documents of a BEIR `corpus.jsonl` under their own `_id`, so the qrels score the index without a mapping
    (`ragtune.datasets.beir`). A line with neither title nor text is left out."""
    from ragtune.datasets.beir import iter_corpus_rows

    resolved, modified = str(path.resolve()), path.stat().st_mtime
    for doc in iter_corpus_rows(rows, str(path)):
        yield Document(
            doc_id=doc.doc_id, text=doc.text, source=resolved, title=doc.title, modified=modified,
            content_hash=text_hash(doc.text), tenant=getattr(options, "tenant", None),
            version=getattr(options, "version", None), metadata={"format": "beir"},
        )


QA_LOADERS: dict[str, Callable[[Any, Path, Any], Iterator[Document]]] = {
    "hotpotqa": load_hotpotqa,
    "squad": load_squad,
    "nq": load_nq,
}
