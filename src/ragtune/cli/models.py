"""`ragtune models`: which generator and embedder are in use, and where their files are."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from ragtune.cli.common import out
from ragtune.cli.options import json_option


def models(
    generator: str = typer.Option(None, help="Generator reference to resolve (default: bundled SmolLM2)."),
    embedder: str = typer.Option(None, help="Embedder reference to resolve (default: bundled MiniLM)."),
    as_json: bool = json_option("Print as JSON."),
) -> None:
    """Which generator and embedder are in use, and where their files are."""
    from ragtune import models as m

    rows = []
    for role, resolve in (("generator", lambda: m.resolve_generator(generator, convert=False)),
                          ("embedder", lambda: m.resolve_embedder(embedder))):
        try:
            r = resolve()
            converted = r.source != "bundled" or role != "generator" or Path(r.path, "config.json").exists()
            rows.append({"role": role, "reference": r.reference, "source": r.source, "path": r.path,
                         "detail": r.detail + ("" if converted else " (converted to this folder on first use)")})
        except m.ModelNotFoundError as exc:
            rows.append({"role": role, "reference": generator or embedder or "default", "source": "missing",
                         "path": "", "detail": str(exc)})
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table()
    for col in ("role", "reference", "source", "path", "detail"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in ("role", "reference", "source", "path", "detail")))
    out.print(table)
    out.print(f"cache: {m.cache_dir()}  (set RAGTUNE_CACHE to move it; RAGTUNE_GENERATOR / RAGTUNE_EMBEDDER change "
              "the defaults)")


def register(app: typer.Typer) -> None:
    """Add `models` to the main app."""
    app.command("models")(models)
