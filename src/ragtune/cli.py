"""The `ragtune` command: a thin typer front that parses options, calls a stage, and prints with rich.

Stages register their own sub-commands (`register(app)` in `ragtune.<stage>.cli`) so this file stays small.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ragtune.retrieve import cli as opt
from ragtune.workspace import DEFAULT_WORKSPACE

app = typer.Typer(
    help="Fine-tune both halves of a RAG system on your own documents, and prove it helps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)  # messages stay one line each: greppable in logs
out = Console()

WorkspaceOption = typer.Option(
    DEFAULT_WORKSPACE, "--workspace", "-w", help="Folder holding the index and every artifact.",
    envvar="RAGTUNE_WORKSPACE",
)


@app.callback()
def _global_options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show third-party warnings and the progress bars of internal steps (model "
        "conversion, tokenisation, dataset maps); also RAGTUNE_VERBOSE=1.",
    ),
) -> None:
    """Options for every command."""
    from ragtune.progress import quiet_libraries, set_verbose

    if verbose:
        set_verbose(True)
    else:
        quiet_libraries()


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


class _InterruptLatch:
    """Ctrl-C that cannot be lost. The interrupt is raised at once as usual, and also remembered: native code that
    checks for signals and clears the error (seen on a busy machine: an ingest ran to the end through a Ctrl-C) would
    otherwise swallow it, so `check()` raises it again at the next commit boundary."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    def __enter__(self) -> _InterruptLatch:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., help="Files or folders (searched recursively)."),
    workspace: Path = WorkspaceOption,
    chunker: str = typer.Option("sentences", help="tokens | sentences | paragraphs | semantic"),
    chunk_size: int = typer.Option(240, help="Maximum chunk size, in the embedder's tokens."),
    overlap: int = typer.Option(0, help="Overlap between consecutive chunks, in tokens."),
    embedder: str = typer.Option(None, help="Embedding model: bundled name, local folder or hub id (default: the "
                                 "one the index was built or re-embedded with, else the bundled MiniLM)."),
    format: str = typer.Option(
        "auto", help="auto | text | markdown | html | pdf | json | jsonl | hotpotqa | squad | nq (auto: by extension "
        "and content)"
    ),
    text_field: str = typer.Option(None, help="JSON/JSONL: field holding the text (default: text, content, ...)."),
    id_field: str = typer.Option(None, help="JSON/JSONL: field holding a stable record id."),
    title_field: str = typer.Option(None, help="JSON/JSONL: field holding the title."),
    meta_field: list[str] = typer.Option(None, help="JSON/JSONL: fields kept as filterable metadata (repeatable)."),
    tenant: str = typer.Option(None, help="Tenant the documents belong to (filterable as tenant=NAME)."),
    doc_version: str = typer.Option(None, "--doc-version", help="Version label (filterable as version=LABEL)."),
    rebuild: bool = typer.Option(False, help="Drop the existing index and re-embed everything."),
    batch_size: int = typer.Option(32, help="Embedding batch size."),
    commit_every: int = typer.Option(1024, help="Commit to the index after about this many chunks.", hidden=True),
    part_chars: int = typer.Option(1_000_000, help="Split a document longer than this many characters into parts "
                                   "committed one at a time.", hidden=True),
    sentences: bool = typer.Option(False, "--sentences", help="Also index every sentence with its parent chunk "
                                   "(for `search --window N` / `--parent`)."),
    summaries: bool = typer.Option(False, "--summaries", help="Also index a short summary per document as its own "
                                   "level (for `search --route auto`). Extractive (lead sentences) unless "
                                   "--summary-model is given."),
    summary_model: str = typer.Option(None, help="With --summaries: an LLM that writes each summary (bundled name, "
                                      "folder, hub id or openai:MODEL). Slow on a CPU: ~4 s a document with the "
                                      "bundled 135M model."),
) -> None:
    """Parse, chunk, embed and index documents (txt, md, html, pdf, json, jsonl, HotpotQA, SQuAD, NQ).

    Incremental: unchanged documents are not re-embedded, changed ones are re-chunked, removed ones leave the index.
    Interrupted (Ctrl-C, kill -9)? Run the same command again: it resumes, nothing lost or stored twice.
    """
    from ragtune.config import IngestConfig
    from ragtune.index.ingest import ingest as run_ingest
    from ragtune.index.settings import IndexMismatchError, IndexSettings
    from ragtune.workspace import Workspace

    if not embedder:
        # An index keeps the embedder it was built (or re-embedded) with, e.g. the model a contrastive run trained:
        # without --embedder a later ingest embeds new documents with that one, not the bundled default.
        recorded = IndexSettings.load(Workspace(workspace))
        if recorded is not None:
            embedder = recorded.embedder
    try:
        config = IngestConfig.model_validate(dict(
            chunker=chunker, chunk_size=chunk_size, overlap=overlap, format=format, text_field=text_field,
            id_field=id_field, title_field=title_field, metadata_fields=meta_field or None, tenant=tenant,
            version=doc_version, batch_size=batch_size, commit_every=commit_every, part_chars=part_chars,
            sentences=sentences,
            summaries=summaries, summary_model=summary_model,
            **({"embedder": embedder} if embedder else {}),
        ))
    except ValueError as exc:
        fail(str(exc).splitlines()[0] if "validation error" not in str(exc) else _pydantic_message(exc))
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing and len(missing) == len(paths):
        fail(f"no such file or folder: {_shown(', '.join(missing))}")

    from ragtune.progress import Reporter

    # A bar on a terminal, a plain line every ~10 s or 5% in a log (a long ingest is never silent), also in ingest.log.
    Path(workspace).mkdir(parents=True, exist_ok=True)
    with Reporter("embedding", unit="chunks", log_file=Path(workspace) / "ingest.log") as bar:
        interrupted = _InterruptLatch()

        def progress(done: int, total: int) -> None:
            bar.update(done, total=total)
            interrupted.check()

        try:
            with interrupted:
                summary = run_ingest(paths, workspace, config, rebuild=rebuild, progress=progress)
        except KeyboardInterrupt:
            bar.close()
            console.print(
                "[yellow]interrupted[/]: documents committed so far are kept; run the same command again to resume."
            )
            raise typer.Exit(130) from None
        except (IndexMismatchError, ValueError) as exc:
            bar.close()
            fail(_shown(str(exc)))
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {_shown(warning)}")
    failed = f", {summary.failed} failed" if summary.failed else ""
    console.print(
        f"[green]ingested[/] {summary.files_loaded} files ({summary.documents} documents), "
        f"[yellow]skipped[/] {len(summary.skipped)} files, {summary.warned} warnings · documents: {summary.new} new, "
        f"{summary.updated} updated, {summary.unchanged} unchanged, {summary.removed} removed{failed} · chunks: "
        f"{summary.chunks_added} added, {summary.chunks_total} in index · {summary.seconds:.1f}s · workspace "
        f"{_shown(str(workspace))}"
    )
    for level, rows in summary.levels.items():
        console.print(f"[green]level[/] {level}: {rows} rows ({summary.stage_seconds.get(level, 0.0):.1f}s)")


def _shown(text: str) -> str:
    """Text from outside (file names, warnings) made safe to print: control characters escaped, so a newline or an
    ANSI escape in a name cannot forge or colour a line, and rich markup escaped, so `[/x]` in a path cannot crash
    the print and `[red]` cannot silently vanish from it."""
    from rich.markup import escape

    from ragtune.corpus.loaders import printable

    return escape(printable(text))


def _pydantic_message(exc: Exception) -> str:
    errors: list = getattr(exc, "errors", lambda: [])()
    if errors:
        e = errors[0]
        return f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}"
    return str(exc)


@app.command()
def search(
    query: str = typer.Argument(..., help="What to look for."),
    workspace: Path = WorkspaceOption,
    k: int = typer.Option(5, "-k", "--top-k", help="Number of hits."),
    mode: str = typer.Option("hybrid", help="hybrid (RRF of dense + BM25) | dense | bm25"),
    filter: list[str] = typer.Option(None, "--filter", help="key=value metadata filter, applied before top-k "
                                     "(repeatable; all must match). Keys: source, title, doc_id, tenant, version, "
                                     "and any metadata field."),
    as_json: bool = typer.Option(False, "--json", help="Print hits as JSON."),
    candidates: int = typer.Option(50, help="Hybrid: candidates taken from each leg before fusion."),
    dense_weight: float = typer.Option(1.0, help="Hybrid: weight of the dense ranking in RRF."),
    bm25_weight: float = typer.Option(1.0, help="Hybrid: weight of the BM25 ranking in RRF."),
    retriever: Path = opt.RetrieverOption,
    rerank: str = opt.RerankOption,
    rerank_candidates: int = opt.RerankCandidatesOption,
    transform: str = opt.TransformOption,
    transform_model: str = opt.TransformModelOption,
    window: int = opt.WindowOption,
    parent: bool = opt.ParentOption,
    parent_level: str = opt.ParentLevelOption,
    route: str = opt.RouteOption,
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
            **opt.search_overrides(retriever, rerank, rerank_candidates, transform, transform_model, window,
                                   parent, parent_level, route),
        ))
        searcher = Searcher(workspace, config)
        hits = searcher.search(query, k=k, mode=mode, filters=filters)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc).splitlines()[0] if "validation error" not in str(exc) else _pydantic_message(exc))
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


@app.command()
def models(
    generator: str = typer.Option(None, help="Generator reference to resolve (default: bundled SmolLM2)."),
    embedder: str = typer.Option(None, help="Embedder reference to resolve (default: bundled MiniLM)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
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


# Later stages add their own commands. A stage that is not installed (or not written yet) is simply absent.
for _module in ("ragtune.synth.cli", "ragtune.eval.cli", "ragtune.train.cli", "ragtune.train.export_model_cli",
                "ragtune.serve.cli", "ragtune.run.cli"):
    try:
        importlib.import_module(_module).register(app)
    except ModuleNotFoundError as _exc:
        if _exc.name is None or not _module.startswith(_exc.name):
            raise


def main() -> None:  # pragma: no cover - console entry for `python -m ragtune`
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
