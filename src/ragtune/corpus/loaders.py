"""Load documents from files: text, markdown, HTML, PDF, JSON / JSONL records, and QA data sets as corpora.

Bad input never stops a run: each unreadable file (or JSONL line), symlink loop, unreadable folder, special file
(FIFO, socket, device: never opened, since opening a FIFO blocks) or binary-looking file gives exactly one warning
naming it, the rest is loaded, and a `LoadReport` counts what was loaded and skipped. Names in warnings go through
`printable`, so a file name holding a newline or an ANSI escape cannot forge or colour a log line.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import re
import stat
import unicodedata
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
FORMATS = ("auto", "text", "markdown", "html", "pdf", "json", "jsonl", "hotpotqa", "squad", "nq", "qa-jsonl", "beir")

_TEXT_FIELDS = ("text", "content", "body", "passage", "document", "contents")
_TITLE_FIELDS = ("title", "name", "api_name", "heading")
_MAX_META_LEN = 200
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI_CONTROLS = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def printable(text: str) -> str:
    """`text` with control characters written as escapes (\\n, \\x1b, \\u2028, ...), the way `repr` writes them.

    Covers C0/C1 controls, line and paragraph separators, bidi overrides and lone surrogates (undecodable bytes in
    a file name), so one warning is always one line that says what the name really is. Idempotent: it leaves
    backslashes alone, so escaping an escaped message changes nothing."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or code in _BIDI_CONTROLS:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)  # other non-printables (e.g. zero-width joiners in emoji) cannot break a line
    return "".join(out)


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
    """What a load did: files read, paths skipped (with why), warnings, documents produced, and the sha256 of every
    file's bytes as read (the manifest's inputs: no second read, which could fail or see a different file)."""

    files_loaded: int = 0
    documents: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed_sources: set[str] = field(default_factory=set)
    failed_folders: set[str] = field(default_factory=set)
    inputs: dict[str, str] = field(default_factory=dict)

    def skip(self, path: Path | str, why: str, folder: bool = False) -> None:
        self.skipped.append((str(path), why))
        self.warnings.append(f"{printable(str(path))}: skipped: {printable(why)}")
        try:
            resolved = str(Path(path).resolve())
        except (OSError, RuntimeError):  # a symlink loop cannot be resolved
            resolved = os.path.abspath(path)
        self.failed_sources.add(resolved)
        if folder:
            self.failed_folders.add(resolved)

    def warn(self, message: str) -> None:
        self.warnings.append(printable(message))


class BadInputError(ValueError):
    """A whole file cannot be read; the loader turns it into a warning and moves on."""


def _stat_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink, or removed while listing"
    return f"cannot read ({exc.strerror or exc})"


def _special_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _valid_name(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def iter_files(paths: Iterable[str | Path], report: LoadReport | None = None) -> Iterator[Path]:
    """Regular files under the given paths, recursively, in a stable order; hidden files and folders are left out.

    Symlinks are followed, but a folder already being listed (a symlink loop) is not entered twice. Each path that
    cannot be listed or read, each symlink loop or broken symlink, each special file, and each name that is not
    valid UTF-8 (it could not be stored) is one warning in `report` (when given) and is not yielded."""

    def problem(path: Path, why: str, folder: bool = False) -> None:
        if report is not None:
            report.skip(path, why, folder=folder)

    def walk(folder: Path, ancestors: set[tuple[int, int]]) -> Iterator[Path]:
        beir_corpus = _beir_corpus_of(folder)
        if beir_corpus is not None:  # a BEIR folder's documents are its corpus; queries and qrels are labels
            yield beir_corpus
            return
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problem(folder, f"cannot list folder ({exc.strerror or exc})", folder=True)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = Path(entry.path)
            if not _valid_name(child):
                problem(child, "name is not valid UTF-8; rename it to index it")
                continue
            try:
                st = os.stat(entry.path)
            except OSError as exc:
                problem(child, _stat_problem(exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    problem(child, "symlink loop (links back to a folder above it)", folder=True)
                    continue
                yield from walk(child, ancestors | {key})
            elif stat.S_ISREG(st.st_mode):
                yield child
            else:
                problem(child, f"{_special_kind(st.st_mode)}, not a regular file")

    for raw in paths:
        path = Path(raw)
        try:
            st = os.stat(path)
        except OSError as exc:
            problem(path, "no such file or folder" if exc.errno == errno.ENOENT and not path.is_symlink()
                    else _stat_problem(exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from walk(path, {(st.st_dev, st.st_ino)})
        elif stat.S_ISREG(st.st_mode):
            yield path
        else:
            problem(path, f"{_special_kind(st.st_mode)}, not a regular file")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for compound in (".json.gz", ".jsonl.gz"):
        if name.endswith(compound):
            return compound
    return path.suffix.lower()


def _read_bytes(path: Path, report: LoadReport | None = None) -> bytes:
    """The file's bytes (gunzipped for .gz). Opened non-blocking and checked to be a regular file once open, so a
    file swapped for a FIFO after listing cannot hang the run."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", closefd=True) as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise BadInputError(f"{_special_kind(mode)}, not a regular file")
        data = f.read()
    if report is not None:
        report.inputs[str(path.resolve())] = hashlib.sha256(data).hexdigest()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise BadInputError(f"corrupt gzip file ({exc})") from exc
    return data


# Headers of common binary formats that can start without a NUL byte in the first kilobytes.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"), (b"PK\x03\x04", "zip archive"), (b"PK\x05\x06", "zip archive"),
    (b"\x7fELF", "ELF executable"), (b"\x1f\x8b", "gzip data"), (b"BZh91AY&SY", "bzip2 data"),
    (b"\xfd7zXZ\x00", "xz data"), (b"7z\xbc\xaf\x27\x1c", "7z archive"), (b"Rar!\x1a\x07", "RAR archive"),
    (b"%PDF-", "PDF (name it .pdf to index it)"), (b"\xca\xfe\xba\xbe", "Java class / Mach-O"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executable"), (b"\x00asm", "WebAssembly"),
    (b"SQLite format 3\x00", "SQLite database"),
)
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\f\x1b") + b"\x7f"
_SAMPLE = 8192


def binary_reason(data: bytes) -> str | None:
    """Why `data` is not text, or None. NUL bytes, a known binary header, or a sample (head, middle, tail) where
    more than 30% of characters are control bytes or invalid UTF-8: random bytes score ~60%, Latin-1 prose 2-20%."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return f"binary file ({kind}), not text"
    samples = [data[:_SAMPLE]]
    if len(data) > 4 * _SAMPLE:
        middle = len(data) // 2
        samples += [data[middle : middle + _SAMPLE], data[-_SAMPLE:]]
    for sample in samples:
        if b"\x00" in sample:
            return "binary file (NUL bytes), not text"
        text = sample.decode("utf-8", errors="replace")
        if len(text) < 16:
            continue
        bad = text.count("\ufffd") + sum(sample.count(bytes([b])) for b in _CONTROL_BYTES)
        if bad > 0.30 * len(text) + 4:  # +4: a multibyte character cut at a sample edge
            return "binary file (mostly control bytes or invalid UTF-8), not text"
    return None


def _decode(data: bytes, path: Path, report: LoadReport) -> str:
    reason = binary_reason(data)
    if reason:
        raise BadInputError(reason)
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
    text = _decode(_read_bytes(path, report), path, report)
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

    data = _read_bytes(path, report)
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
    text = _decode(_read_bytes(path, report), path, report)
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
    text = _decode(_read_bytes(path, report), path, report)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            report.warn(f"{path}:{lineno}: skipped malformed JSONL line ({getattr(exc, 'msg', 'nested too deeply')})")


def load_jsonl(path: Path, options: LoadOptions, report: LoadReport) -> Iterator[Document]:
    rows = iter_jsonl(path, report)
    first = next(rows, None)
    if first is None:
        raise BadInputError("no valid JSON lines")
    kind = options.format if options.format in ("nq", "qa-jsonl") else ("nq" if _is_nq(first[1]) else "jsonl")

    def all_rows() -> Iterator[tuple[int, Any]]:
        yield first
        yield from rows

    if kind == "nq":
        from ragtune.corpus.qa_corpora import load_nq_rows

        yield from load_nq_rows(all_rows(), path, options)
        return
    if kind == "qa-jsonl":
        from ragtune.corpus.qa_corpora import load_qa_jsonl_rows

        yield from load_qa_jsonl_rows(all_rows(), path, options)
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


def _beir_corpus_of(folder: Path) -> Path | None:
    """The corpus file when `folder` is a BEIR folder. A folder that cannot be looked into is not one: the walk's
    listing of it then reports the problem once, as for any other unreadable folder."""
    from ragtune.datasets.beir import corpus_file, is_beir_folder

    try:
        return corpus_file(folder) if is_beir_folder(folder) else None
    except OSError:
        return None


def _kind_for(path: Path, options: LoadOptions) -> str:
    if options.format != "auto":
        return options.format
    from ragtune.datasets.beir import is_beir_corpus

    if is_beir_corpus(path):
        return "beir"
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
    """All documents of one file, or [] with one warning when the file cannot be read, whatever the reason: a parser
    that fails in an unforeseen way (deeply nested JSON, a broken PDF object) costs that file, never the run."""
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
        elif kind in ("jsonl", "nq", "qa-jsonl"):
            docs = list(load_jsonl(path, options, report))
        elif kind == "beir":
            from ragtune.corpus.qa_corpora import load_beir_rows

            docs = list(load_beir_rows(iter_jsonl(path, report), path, options))
        else:
            docs = list(load_text(path, options, report, kind=kind))
    except BadInputError as exc:
        report.skip(path, str(exc))
        return []
    except OSError as exc:
        report.skip(path, f"cannot read ({exc.strerror or exc})")
        return []
    except RecursionError:
        report.skip(path, "cannot read (nested too deeply)")
        return []
    except Exception as exc:  # noqa: BLE001 - one bad file must never end the run; the warning names the cause
        report.skip(path, f"cannot read ({type(exc).__name__}: {exc})")
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
    for path in iter_files(paths, report):
        yield from load_file(path, options, report)
