"""`ragtune search`: the public search (`ragtune.retrieve.search.Searcher`) at the terminal, as a table or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ragtune.cli import options as opt
from ragtune.cli.common import console, fail, out, pydantic_message
from ragtune.cli.options import WorkspaceOption, json_option


@opt.with_search_options
def search(
    query: str = typer.Argument(..., help="What to look for."),
    workspace: Path = WorkspaceOption,
    k: int = typer.Option(5, "-k", "--top-k", help="Number of hits."),
    mode: str = typer.Option("hybrid", help="hybrid (RRF of dense + BM25) | dense | bm25"),
    filter: list[str] = typer.Option(None, "--filter", help="key=value metadata filter, applied before top-k "
                                     "(repeatable; all must match). Keys: source, title, doc_id, tenant, version, "
                                     "and any metadata field."),
    as_json: bool = json_option("Print hits as JSON."),
    candidates: int = typer.Option(50, help="Hybrid: candidates taken from each leg before fusion."),
    dense_weight: float = typer.Option(1.0, help="Hybrid: weight of the dense ranking in RRF."),
    bm25_weight: float = typer.Option(1.0, help="Hybrid: weight of the BM25 ranking in RRF."),
    search: dict[str, Any] = opt.SearchOptions,
    explain: bool = typer.Option(False, "--explain", help="Print the route and the query variants searched."),
) -> None:
    """Search the indexed chunks, optionally with query transforms, small-to-big, routing and a reranker."""
    from ragtune.config import SearchConfig
    from ragtune.index.search import MODES, parse_filters
    from ragtune.retrieve.search import Searcher

    if mode not in MODES:
        fail(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if k < 1:
        fail("-k must be at least 1")
    try:
        filters = parse_filters(filter)
        config = SearchConfig.model_validate(dict(
            mode=mode, k=k, candidates=candidates, dense_weight=dense_weight, bm25_weight=bm25_weight,
            **search,
        ))
        searcher = Searcher(workspace, config)
        hits = searcher.search(query, k=k, mode=mode, filters=filters)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc).splitlines()[0] if "validation error" not in str(exc) else pydantic_message(exc))
    if explain:
        console.print(f"[bold]trace:[/] {json.dumps(searcher.pipeline.last_trace, ensure_ascii=False)}")
    if as_json:
        sys.stdout.write(json.dumps([h.public() for h in hits], ensure_ascii=False, indent=2) + "\n")
        return
    if not hits:
        console.print("no hits")
        return
    table = Table(show_lines=True)
    for col in ("#", "score", "title / source", "text"):
        table.add_column(col, overflow="fold")
    for h in hits:
        text = h.text if len(h.text) <= 400 else h.text[:400] + " ..."
        table.add_row(str(h.rank), f"{h.score:.4f}", f"{h.title}\n[dim]{h.source}[/]", text)
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add `search` to the main app."""
    app.command("search")(search)
