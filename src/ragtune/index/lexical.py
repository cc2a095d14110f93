"""BM25 over the chunk texts with bm25s (sparse-matrix BM25: indexes 10k chunks in about a second).

The lexical index is derived data: it is rebuilt from the chunk table whenever the table's version moved (after an
ingest, or after an interrupted one), so it can never disagree with the vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _stemmer():
    try:  # PyStemmer is optional: English stemming helps recall, but BM25 works without it
        import Stemmer  # type: ignore[import-not-found]

        return Stemmer.Stemmer("english")
    except ImportError:
        return None


class LexicalIndex:
    """bm25s index whose document i is row i of the catalog it was built from."""

    def __init__(self, retriever, n_docs: int):
        self.retriever = retriever
        self.n_docs = n_docs
        self.stemmer = _stemmer()

    @classmethod
    def build(cls, texts: list[str]) -> LexicalIndex:
        import bm25s

        retriever = bm25s.BM25()
        if texts:
            tokens = bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False)
            retriever.index(tokens, show_progress=False)
        return cls(retriever, len(texts))

    def save(self, folder: Path, table_version: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.n_docs:
            self.retriever.save(str(folder))
        (folder / "ragtune.json").write_text(
            json.dumps({"table_version": table_version, "n_docs": self.n_docs}), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path, table_version: int) -> LexicalIndex | None:
        """The saved index if it was built from this table version, else None."""
        import bm25s

        meta_path = folder / "ragtune.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("table_version") != table_version:
            return None
        if not meta["n_docs"]:
            return cls(bm25s.BM25(), 0)
        return cls(bm25s.BM25.load(str(folder)), int(meta["n_docs"]))

    def search(self, query: str, k: int, mask: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(row, score) of the top-k rows with a positive score; `mask` (0/1 per row) filters before top-k."""
        import bm25s

        if not self.n_docs:
            return []
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=self.stemmer, show_progress=False)
        if not tokens.ids or not tokens.ids[0]:
            return []
        k = min(k, self.n_docs)
        docs, scores = self.retriever.retrieve(
            tokens, k=k, show_progress=False, weight_mask=mask, n_threads=0
        )
        return [(int(d), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]
