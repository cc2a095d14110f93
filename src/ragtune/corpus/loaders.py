"""Load documents from files: text, markdown, HTML, PDF, JSON / JSONL records, and QA data sets as corpora.

Bad input never stops a run: each unreadable file (or JSONL line) gives one warning naming it, the rest is loaded,
and a `LoadReport` counts what was loaded and skipped.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.hashing import short_id, text_hash
from ragtune.records import Document

TEXT_SUFFIXES = {".txt", ".text", ".rst", ".log", ".csv", ".tsv"}
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdx"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
JSON_SUFFIXES = {".json", ".json.gz"}
JSONL_SUFFIXES = {".jsonl", ".jsonl.gz", ".ndjson"}
FORMATS = ("auto", "text", "markdown", "html", "pdf", "json", "jsonl", "hotpotqa", "squad", "nq")

_TEXT_FIELDS = ("text", "content", "body", "passage", "document", "contents")
_TITLE_FIELDS = ("title", "name", "api_name", "heading")
_MAX_META_LEN = 200


@dataclass
class LoadOptions:
    """How to read files. Field names matter only for JSON / JSONL records."""

    format: str = "auto"
    text_field: str | None = None
    id_field: str | None = None
    title_field: str | None = None
    metadata_fields: list[str] | None = None
    tenant: str | None = None
    version: str | None = None


@dataclass
class LoadReport:
    """What a load did: files read, files skipped (with why), per-line warnings, documents produced."""

    files_loaded: int = 0
    documents: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed_sources: set[str] = field(default_factory=set)

    def skip(self, path: Path | str, why: str) -> None:
        self.skipped.append((str(path), why))
        self.warnings.append(f"{path}: skipped: {why}")
        self.failed_sources.add(str(Path(path).resolve()))

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class BadInputError(ValueError):
    """A whole file cannot be read; the loader turns it into a warning and moves on."""


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files under the given paths, recursively, in a stable order; hidden files and folders are left out."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if child.is_file() and not any(part.startswith(".") for part in rel.parts):
                    yield child
        else:
            yield path


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for compound in (".json.gz", ".jsonl.gz"):
        if name.endswith(compound):
            return compound
    return path.suffix.lower()


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise BadInputError(f"corrupt gzip file ({exc})") from exc
    return data


def _looks_binary(data: bytes) -> bool:
    head = data[:8192]
    return b"\x00" in head


def _decode(data: bytes, path: Path, report: LoadReport) -> str:
    if _looks_binary(data):
        raise BadInputError("binary file (NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8", errors="replace")
        report.warn(f"{path}: invalid UTF-8 at byte {exc.start}; undecodable bytes replaced with U+FFFD")
    if not text.strip():
        raise BadInputError("empty file")
    return text


def _file_document(path: Path, text: str, title: str, options: LoadOptions, **metadata: Any) -> Document:
    resolved = path.resolve()
    return Document(
        doc_id=short_id("file", str(resolved)),
        text=text,
        source=str(resolved),
        title=title or path.stem,
        modified=path.stat().st_mtime,
        content_hash=text_hash(text),
        tenant=options.tenant,
        version=options.version,
        metadata={"format": metadata.pop("format", "text"), **metadata},
    )


def html_to_text(html: str) -> tuple[str, str]:
    """Readable text and title of an HTML page: scripts, styles and navigation chrome dropped, blocks on own lines."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template", "svg", "head", "nav", "footer", "form", "iframe"]):
        tag.decompose()
    body = soup.body or soup
    text = body.get_text("\n")
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.splitlines()]
    # Keep paragraph structure: collapse runs of blank lines to one.
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip(), title


def _looks_like_html(text: str) -> bool:
    head = text[:1024].lstrip().lower()
    return head.startswith(("<!doctype html", "<html")) or ("<html" in head and "</" in text[:65536])


def load_text(path: Path, options: LoadOptions, report: LoadReport, kind: str = "text") -> Iterator[Document]:
    text = _decode(_read_bytes(path), path, report)
    title = ""
    if kind == "html" or (kind == "text" and _looks_like_html(text)):
        # A .txt that is really an HTML page (as gorilla's sample blog.txt is) is read as HTML, not as markup soup.
        text, title = html_to_text(text)
        kind = "html"
        if not text.strip():
            raise BadInputError("HTML page has no readable text")
    elif kind == "markdown":
        match = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE)
        title = match.group(1).strip() if match else ""
    yield _file_document(path, text, title, options, format=kind)


def load_pdf(path: Path, options: LoadOptions, report: LoadReport) -> Iterator[Document]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    data = path.read_bytes()
    if not data.strip():
        raise BadInputError("empty file")
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise BadInputError("corrupt PDF: no %PDF header")
    try:
        import io
        import logging

        logging.getLogger("pypdf").setLevel(logging.ERROR)
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, AttributeError) as exc:
        raise BadInputError(f"corrupt PDF ({type(exc).__name__}: {exc})") from exc
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text.strip():
        raise BadInputError("PDF has no extractable text (scanned pages need OCR, which ragtune does not do)")
    yield _file_document(path, text, str(meta_title), options, format="pdf", pages=len(pages))


def _scalar_metadata(record: dict[str, Any], exclude: set[str]) -> dict[str, Any]:
    meta = {}
    for key, value in record.items():
        if key in exclude or isinstance(value, bool | type(None)):
            continue
        if isinstance(value, int | float) or (isinstance(value, str) and len(value) <= _MAX_META_LEN):
            meta[key] = value
    return meta


def _render_record(record: dict[str, Any]) -> str:
    """A record with no text field becomes 'key: value' lines, nested values as compact JSON."""
    lines = []
    for key, value in record.items():
        if value in (None, "", [], {}):
            continue
        rendered = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        lines.append(f"{key}: {rendered}")
    return "\n".join(lines)


def record_to_document(
    record: Any, path: Path, position: int, options: LoadOptions, report: LoadReport
) -> Document | None:
    """One JSON record to a document, with configurable text / id / title / metadata fields."""
    where = f"{path}:{position}"
    if isinstance(record, str):
        record = {"text": record}
    if not isinstance(record, dict):
        report.warn(f"{where}: skipped: record is a {type(record).__name__}, not an object")
        return None
    text_field = options.text_field or next((f for f in _TEXT_FIELDS if isinstance(record.get(f), str)), None)
    if options.text_field and not isinstance(record.get(options.text_field), str):
        report.warn(f"{where}: skipped: no string field {options.text_field!r}")
        return None
    text = record[text_field] if text_field else _render_record(record)
    if not text.strip():
        report.warn(f"{where}: skipped: empty text")
        return None
    id_field = options.id_field or next((f for f in ("id", "_id", "doc_id") if f in record), None)
    record_id = str(record[id_field]) if id_field and id_field in record else str(position)
    title_field = options.title_field or next((f for f in _TITLE_FIELDS if isinstance(record.get(f), str)), None)
    title = str(record.get(title_field, "")) if title_field else ""
    if options.metadata_fields is not None:
        metadata = {k: record[k] for k in options.metadata_fields if k in record}
    else:
        metadata = _scalar_metadata(record, {text_field or "", id_field or ""})
    resolved = path.resolve()
    return Document(
        doc_id=short_id("record", str(resolved), record_id),
        text=text,
        source=str(resolved),
        title=title,
        modified=path.stat().st_mtime,
        content_hash=text_hash(text),
        tenant=options.tenant,
        version=options.version,
        metadata={"format": "record", "record_id": record_id, **metadata},
    )


def load_json(path: Path, options: LoadOptions, report: LoadReport) -> Iterator[Document]:
    text = _decode(_read_bytes(path), path, report)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    kind = options.format if options.format in ("hotpotqa", "squad", "nq") else sniff_json(data)
    if kind != "json":
        from ragtune.corpus.qa_corpora import QA_LOADERS

        yield from QA_LOADERS[kind](data, path, options)
        return
    records = data if isinstance(data, list) else data.get("data", [data]) if isinstance(data, dict) else [data]
    if isinstance(data, dict) and not isinstance(records, list):
        records = [data]
    for position, record in enumerate(records):
        doc = record_to_document(record, path, position, options, report)
        if doc is not None:
            yield doc


def iter_jsonl(path: Path, report: LoadReport) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every well-formed line; each malformed line is one warning."""
    text = _decode(_read_bytes(path), path, report)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            report.warn(f"{path}:{lineno}: skipped malformed JSONL line ({exc.msg})")


def load_jsonl(path: Path, options: LoadOptions, report: LoadReport) -> Iterator[Document]:
    rows = iter_jsonl(path, report)
    first = next(rows, None)
    if first is None:
        raise BadInputError("no valid JSON lines")
    kind = options.format if options.format == "nq" else ("nq" if _is_nq(first[1]) else "jsonl")

    def all_rows() -> Iterator[tuple[int, Any]]:
        yield first
        yield from rows

    if kind == "nq":
        from ragtune.corpus.qa_corpora import load_nq_rows

        yield from load_nq_rows(all_rows(), path, options)
        return
    for lineno, record in all_rows():
        doc = record_to_document(record, path, lineno, options, report)
        if doc is not None:
            yield doc


def sniff_json(data: Any) -> str:
    """Recognise a QA data set by its shape, so `ragtune ingest hotpot.json` needs no --format."""
    if isinstance(data, list) and data and isinstance(data[0], dict):
        first = data[0]
        if "context" in first and "supporting_facts" in first:
            return "hotpotqa"
        if _is_nq(first):
            return "nq"
    if isinstance(data, dict) and isinstance(data.get("data"), list) and data["data"]:
        first = data["data"][0]
        if isinstance(first, dict) and "paragraphs" in first:
            return "squad"
    return "json"


def _is_nq(record: Any) -> bool:
    return isinstance(record, dict) and "question" in record and isinstance(record.get("ctxs"), list)


def _kind_for(path: Path, options: LoadOptions) -> str:
    if options.format != "auto":
        return options.format
    suffix = _suffix(path)
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix == ".pdf":
        return "pdf"
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    return "text"


def load_file(path: Path, options: LoadOptions, report: LoadReport) -> list[Document]:
    """All documents of one file, or [] with a warning when the file cannot be read."""
    if not path.exists():
        report.skip(path, "no such file or folder")
        return []
    kind = _kind_for(path, options)
    try:
        if path.stat().st_size == 0:
            raise BadInputError("empty file")
        if kind == "pdf":
            docs = list(load_pdf(path, options, report))
        elif kind in ("json", "hotpotqa", "squad"):
            docs = list(load_json(path, options, report))
        elif kind in ("jsonl", "nq"):
            docs = list(load_jsonl(path, options, report))
        else:
            docs = list(load_text(path, options, report, kind=kind))
    except BadInputError as exc:
        report.skip(path, str(exc))
        return []
    except OSError as exc:
        report.skip(path, f"cannot read ({exc.strerror or exc})")
        return []
    if not docs:
        report.skip(path, "no documents in file")
        return []
    report.files_loaded += 1
    report.documents += len(docs)
    return docs


def load_paths(paths: Iterable[str | Path], options: LoadOptions | None = None, report: LoadReport | None = None):
    """Documents of every file under `paths`, file by file (a generator, so a huge corpus never sits in memory)."""
    options = options or LoadOptions()
    report = report if report is not None else LoadReport()
    for path in iter_files(paths):
        yield from load_file(path, options, report)
