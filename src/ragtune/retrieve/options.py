"""The search options shared by every command that searches (`ragtune search`, `ragtune eval --setting retrieved`),
as `SearchConfig` fields. The command-line declarations of these options are in `ragtune.cli.options`: a library
module does not import typer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragtune.config import SearchConfig


def search_overrides(retriever: Path | str | None = None, rerank: str | None = None, rerank_candidates: int = 20,
                     rerank_gate: bool = True, transform: str = "none", transform_model: str | None = None,
                     window: int = 0, parent: bool = False, parent_level: str = "chunk",
                     route: str = "off") -> dict[str, Any]:
    """The SearchConfig fields these options set, leaving out the ones left at their default."""
    values: dict[str, Any] = {
        "retriever": str(retriever) if retriever else None, "reranker": rerank, "transform": transform,
        "transform_model": transform_model, "window": window, "parent": parent_level if parent else "none",
        "route": route,
    }
    if rerank:
        values["rerank_candidates"] = rerank_candidates
        values["rerank_gate"] = rerank_gate
    defaults = SearchConfig()
    return {k: v for k, v in values.items() if v != getattr(defaults, k)}
