"""The search options shared by every command that searches (`ragtune search`, `ragtune eval --setting retrieved`),
defined once so their names, defaults and help never drift apart. Each maps to a `SearchConfig` field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ragtune.config import SearchConfig

RetrieverOption = typer.Option(None, "--retriever", help="A trained retriever folder (`ragtune train retriever`): "
                               "its query encoder embeds the query for the dense leg.")
RerankOption = typer.Option(None, "--rerank", help="Rerank the top --rerank-candidates hits: a cross-encoder (PATH or "
                            "cross-encoder:PATH, a `ragtune train reranker` folder or hub id) or an LLM judging "
                            "relevance by P(yes) (llm:MODEL; llm: alone is the bundled model).")
RerankCandidatesOption = typer.Option(20, "--rerank-candidates", help="With --rerank: first-stage hits it reads.")
TransformOption = typer.Option("none", "--transform", help="Query transform: none | rewrite | hyde (embed a "
                               "hypothetical answer) | subqueries (decompose, retrieve each, fuse) | multi "
                               "(paraphrases fused by RRF), each through an LLM and cached per (model, query) | hop "
                               "(no LLM: search again with the top hit's text added, fuse; multi-hop questions) | "
                               "link (no LLM: add the documents whose title the top hits mention) | hop+link.")
TransformModelOption = typer.Option(None, "--transform-model", help="LLM for --transform (default: the bundled one).")
WindowOption = typer.Option(0, "--window", help="Small-to-big: match sentences, return each with N sentences either "
                            "side (needs `ingest --sentences`).")
ParentOption = typer.Option(False, "--parent", help="Small-to-big: match sentences, return each one's parent (chunk "
                            "or document, see --parent-level), each parent once (needs `ingest --sentences`).")
ParentLevelOption = typer.Option("chunk", "--parent-level", help="With --parent: chunk | document.")
RouteOption = typer.Option("off", "--route", help="off | auto (rules: summarise / overview / compare questions go to "
                           "the document-summary level, fact questions to chunks) | llm (an LLM decides). Needs "
                           "`ingest --summaries`.")


def search_overrides(retriever: Path | str | None = None, rerank: str | None = None, rerank_candidates: int = 20,
                     transform: str = "none", transform_model: str | None = None, window: int = 0,
                     parent: bool = False, parent_level: str = "chunk", route: str = "off") -> dict[str, Any]:
    """The SearchConfig fields these options set, leaving out the ones left at their default."""
    values: dict[str, Any] = {
        "retriever": str(retriever) if retriever else None, "reranker": rerank, "transform": transform,
        "transform_model": transform_model, "window": window, "parent": parent_level if parent else "none",
        "route": route,
    }
    if rerank:
        values["rerank_candidates"] = rerank_candidates
    defaults = SearchConfig()
    return {k: v for k, v in values.items() if v != getattr(defaults, k)}
