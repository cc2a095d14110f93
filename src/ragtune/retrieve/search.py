"""The public search: the index's first stage plus every stage `SearchConfig` adds around it.

`Searcher` is an `IndexSearcher` (`ragtune.index.search`: dense, BM25, hybrid, filters, levels) whose `search` runs
the retrieval pipeline (`ragtune.retrieve.pipeline`: route, query transforms, small-to-big, title links, reranking).
With every option left off it returns exactly the first stage's hits.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ragtune.config import SearchConfig
from ragtune.index.embedding import Embedder
from ragtune.index.search import MODES, IndexSearcher
from ragtune.llm import LLM
from ragtune.records import Hit
from ragtune.retrieve.pipeline import RetrievalPipeline
from ragtune.workspace import Workspace


class Searcher(IndexSearcher):
    """Search one workspace as `SearchConfig` says; reloads the index when the table changes."""

    def __init__(self, workspace: Workspace | str | os.PathLike[str], config: SearchConfig | None = None,
                 embedder: Embedder | None = None, level: str = "chunks",
                 llm_for: Callable[[str | None], LLM] | None = None):
        """`llm_for(ref)`: the LLM for a stage's model reference (transform_model, route_model, `llm:REF` reranker).
        Default: `load_llm`. A server passes one that hands back the generator it already holds."""
        super().__init__(workspace, config, embedder, level)
        self.llm_for = llm_for
        self._pipeline: RetrievalPipeline | None = None

    @property
    def pipeline(self) -> RetrievalPipeline:
        """The stages `SearchConfig` adds around the first stage, built on first use."""
        if self._pipeline is None:
            self._pipeline = RetrievalPipeline(self, self.llm_for)
        return self._pipeline

    def search(self, query: str, k: int | None = None, mode: str | None = None,
               filters: dict[str, str] | None = None) -> list[Hit]:
        """The top-k hits for `query`. Scores: cosine (dense), BM25 (bm25), the fused RRF score (hybrid), or the
        reranker's score. Query transforms, small-to-big, routing and reranking run as `SearchConfig` says."""
        k = k or self.config.k
        mode = mode or self.config.mode
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
        if not query.strip():
            raise ValueError("empty query")
        return self.pipeline.search(query, k, mode, filters)
