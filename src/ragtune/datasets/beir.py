"""BEIR-format retrieval data sets: `corpus.jsonl`, `queries.jsonl` and `qrels/{train,dev,test}.tsv`, read the same by
ingestion (the corpus, under BEIR's own document ids), retriever training (the train qrels, as pairs) and
`ragtune eval-retrieval` (the test qrels), so a published BEIR set or one built from a QA set is scored like BEIR and
MTEB score it.

Layout (BEIR, Thakur et al. 2021):
- `corpus.jsonl`: `{"_id", "title", "text", "metadata"?}` per line (`.jsonl.gz` too);
- `queries.jsonl`: `{"_id", "text", "metadata"?}` per line; `queries_SPLIT.jsonl` files are read too (a folder that
  ships one split, such as `../shared/data/scifact_train/queries_train.jsonl`);
- `qrels/SPLIT.tsv`: `query-id<TAB>corpus-id<TAB>score`, an optional header line; a score > 0 is relevant, a larger
  score more relevant (graded nDCG).

A set shipping only a train split is held out by query with `held_out` (a seeded hash of the query id: the same
queries on every machine, and a query never changes side when others are added). Foundation module: no stage imports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ragtune.datasets.base import DatasetError, QAItem, read_rows
from ragtune.splits import split_of

Qrels = dict[str, dict[str, int]]  # query id -> document id -> relevance score
CORPUS_NAMES = ("corpus.jsonl", "corpus.jsonl.gz")
SPLITS = ("train", "dev", "test")


class BeirDoc(BaseModel):
    """One corpus document under its BEIR id (kept as the index's `doc_id`, so qrels need no mapping)."""

    doc_id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class BeirQuery(BaseModel):
    """One query (a question, a claim, ...) under its BEIR id."""

    query_id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class BeirDataset(BaseModel):
    """A BEIR folder in memory: corpus, queries and the qrels of each split it has."""

    folder: str = ""
    corpus: dict[str, BeirDoc] = Field(default_factory=dict)
    queries: dict[str, BeirQuery] = Field(default_factory=dict)
    qrels: dict[str, Qrels] = Field(default_factory=dict)

    def split(self, name: str) -> tuple[list[BeirQuery], Qrels]:
        """The queries of one split that have a relevant document, sorted by id, with their qrels."""
        if name not in self.qrels:
            have = ", ".join(sorted(self.qrels)) or "none"
            raise DatasetError(f"{self.folder or 'BEIR data'}: no qrels for split {name!r} (qrels here: {have})")
        qrels = {q: docs for q, docs in self.qrels[name].items() if q in self.queries and relevant(docs)}
        return [self.queries[q] for q in sorted(qrels)], qrels


def relevant(judged: Mapping[str, int]) -> set[str]:
    """The documents a query's qrels count as relevant: score > 0 (BEIR's relevance level 1)."""
    return {doc for doc, score in judged.items() if score > 0}


# ---------------------------------------------------------------------------------------------------------------------
# Reading


def corpus_file(folder: Path) -> Path | None:
    return next((folder / n for n in CORPUS_NAMES if (folder / n).is_file()), None)


def query_files(folder: Path) -> list[Path]:
    """`queries.jsonl` and every `queries_*.jsonl` (gzipped or not), in name order."""
    return sorted(p for p in folder.glob("queries*.jsonl*") if p.is_file() and p.name.endswith((".jsonl", ".gz")))


def is_beir_folder(path: str | Path) -> bool:
    """A folder with a corpus file and queries or qrels beside it: what `ragtune ingest DIR` reads as BEIR."""
    folder = Path(path)
    return folder.is_dir() and corpus_file(folder) is not None and (
        bool(query_files(folder)) or (folder / "qrels").is_dir())


def is_beir_corpus(path: str | Path) -> bool:
    """A `corpus.jsonl` file inside a BEIR folder."""
    path = Path(path)
    return path.name in CORPUS_NAMES and is_beir_folder(path.parent)


def doc_from_record(record: Any, where: str) -> BeirDoc | None:
    """A corpus line as a document; None for one with neither title nor text (nothing to embed). A document with a
    title and no text is its title (some BEIR corpora have such lines)."""
    if not isinstance(record, dict) or record.get("_id") in (None, ""):
        raise DatasetError(f"{where}: a BEIR corpus line is an object with an '_id'")
    title = str(record.get("title") or "").strip()
    text = str(record.get("text") or "").strip() or title
    if not text:
        return None
    return BeirDoc(doc_id=str(record["_id"]), title=title, text=text, metadata=_metadata(record))


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    value = record.get("metadata")
    return value if isinstance(value, dict) else {}


def iter_corpus_rows(rows: Iterable[tuple[int, Any]], where: str) -> Iterator[BeirDoc]:
    """Documents from (line number, record) pairs: for a caller that parsed the lines itself (ingestion warns about
    a malformed line instead of stopping)."""
    for lineno, record in rows:
        doc = doc_from_record(record, f"{where}:{lineno}")
        if doc is not None:
            yield doc


def iter_corpus(path: str | Path) -> Iterator[BeirDoc]:
    """The documents of a corpus file, one at a time (a large corpus never sits in memory)."""
    yield from iter_corpus_rows(read_rows(Path(path)), str(path))


def read_queries(path: str | Path) -> dict[str, BeirQuery]:
    out: dict[str, BeirQuery] = {}
    for lineno, record in read_rows(Path(path)):
        if not isinstance(record, dict) or record.get("_id") in (None, "") or not str(record.get("text", "")).strip():
            raise DatasetError(f"{path}:{lineno}: a BEIR query line is an object with '_id' and 'text'")
        qid = str(record["_id"])
        out[qid] = BeirQuery(query_id=qid, text=str(record["text"]).strip(), metadata=_metadata(record))
    return out


def read_qrels(path: str | Path) -> Qrels:
    """`query-id<TAB>corpus-id<TAB>score` lines (a header line is skipped; a line with 4 columns is TREC's
    `qid 0 docid score`)."""
    qrels: Qrels = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            cols = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if not cols or not line.strip():
                continue
            if len(cols) == 4:
                cols = [cols[0], cols[2], cols[3]]
            if len(cols) != 3:
                raise DatasetError(f"{path}:{lineno}: expected query-id, corpus-id, score (tab-separated)")
            try:
                score = int(float(cols[2]))
            except ValueError:
                if lineno == 1:  # the header: query-id corpus-id score
                    continue
                raise DatasetError(f"{path}:{lineno}: score {cols[2]!r} is not a number") from None
            qrels.setdefault(cols[0], {})[cols[1]] = score
    return qrels


def qrels_files(folder: Path) -> dict[str, Path]:
    """Split name -> qrels file (`qrels/*.tsv`)."""
    qdir = folder / "qrels"
    return {p.stem: p for p in sorted(qdir.glob("*.tsv"))} if qdir.is_dir() else {}


def load_beir(folder: str | Path, splits: Iterable[str] | None = None, corpus: bool = True) -> BeirDataset:
    """A BEIR folder: its corpus (unless `corpus=False`: evaluation against an index needs only ids), every query and
    the qrels of `splits` (default: every `qrels/*.tsv`)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"BEIR folder not found: {folder}")
    files = qrels_files(folder)
    wanted = list(splits) if splits is not None else list(files)
    for name in wanted:
        if name not in files:
            raise DatasetError(f"{folder}: no qrels/{name}.tsv (qrels here: {', '.join(files) or 'none'})")
    queries: dict[str, BeirQuery] = {}
    for path in query_files(folder):
        queries.update(read_queries(path))
    if not queries:
        raise DatasetError(f"{folder}: no queries.jsonl")
    docs: dict[str, BeirDoc] = {}
    if corpus:
        found = corpus_file(folder)
        if found is None:
            raise DatasetError(f"{folder}: no corpus.jsonl")
        docs = {d.doc_id: d for d in iter_corpus(found)}
    return BeirDataset(folder=str(folder), corpus=docs, queries=queries,
                       qrels={name: read_qrels(files[name]) for name in wanted})


# ---------------------------------------------------------------------------------------------------------------------
# Splits, writing, and conversions


def held_out(qrels: Qrels, share: float = 0.2, seed: int = 0) -> tuple[Qrels, Qrels]:
    """(train, test) qrels: a query is held out when a seeded hash of its id falls under `share` (about 20% of the
    queries by default). By query, so one query's relevant documents never straddle the two sides."""
    if not 0.0 < share < 1.0:
        raise ValueError("share must be in (0, 1)")
    train: Qrels = {}
    test: Qrels = {}
    for qid, docs in qrels.items():
        bucket = int(hashlib.sha1(f"{seed}:{qid}".encode()).hexdigest(), 16) % 10_000
        (test if bucket < share * 10_000 else train)[qid] = dict(docs)
    return train, test


def write_qrels(path: Path, qrels: Qrels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid in sorted(qrels):
            for doc_id, score in qrels[qid].items():
                f.write(f"{qid}\t{doc_id}\t{score}\n")


def write_beir(folder: str | Path, docs: Iterable[BeirDoc] | None, queries: Iterable[BeirQuery],
               qrels: Mapping[str, Qrels]) -> Path:
    """Write a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) in a deterministic line order; `docs=None`
    leaves the corpus file alone (a corpus copied as is)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if docs is not None:
        with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text, "metadata": d.metadata},
                                   ensure_ascii=False) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for q in sorted(queries, key=lambda q: q.query_id):
            f.write(json.dumps({"_id": q.query_id, "text": q.text, "metadata": q.metadata}, ensure_ascii=False) + "\n")
    for name, split_qrels in qrels.items():
        write_qrels(folder / "qrels" / f"{name}.tsv", split_qrels)
    return folder


def from_qa_items(items: Iterable[QAItem]) -> tuple[list[BeirDoc], list[BeirQuery], dict[str, Qrels]]:
    """A QA set (HotpotQA, ...) as BEIR: every distinct document once under the id ingestion gives it, each question a
    query whose gold documents are relevant (score 1), train / test qrels by the project's split of the question id
    (`ragtune.splits`: the questions `eval` holds out are the test queries)."""
    docs: dict[str, BeirDoc] = {}
    queries: list[BeirQuery] = []
    qrels: dict[str, Qrels] = {"train": {}, "test": {}}
    for item in sorted(items, key=lambda it: it.id):
        for d in item.documents():
            docs.setdefault(d.doc_id, BeirDoc(doc_id=d.doc_id, title=d.title, text=d.text))
        if not item.gold_docs:
            continue
        metadata = {"answers": item.answers, **{k: v for k, v in item.metadata.items() if v is not None}}
        queries.append(BeirQuery(query_id=item.id, text=item.question, metadata=metadata))
        side = "test" if split_of(item.id) == "eval" else "train"
        qrels[side][item.id] = {d.doc_id: 1 for d in item.gold_docs}
    return list(docs.values()), queries, qrels


def training_pairs(dataset: BeirDataset, split: str = "train") -> list[dict[str, Any]]:
    """One row per (query, relevant document) of a split, in the JSON shape of `ragtune.synth.records.PairExample`
    (what `ragtune train retriever --data` reads), marked `split: train` whichever split they come from: they are
    training rows. Needs the corpus loaded; a relevant document missing from it is left out."""
    queries, qrels = dataset.split(split)
    rows = []
    for q in queries:
        for doc_id in sorted(relevant(qrels[q.query_id])):
            doc = dataset.corpus.get(doc_id)
            if doc is None:
                continue
            rows.append({"id": q.query_id, "question": q.text, "positive_id": doc_id, "positive": doc.text,
                         "negative_ids": [], "negatives": [], "source": "beir", "split": "train"})
    return rows
