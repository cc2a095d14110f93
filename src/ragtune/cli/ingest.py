"""`ragtune ingest`: parse, chunk, embed and index documents into a workspace (`ragtune.index.ingest`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ragtune.cli.common import InterruptLatch, console, fail, pydantic_message, shown
from ragtune.cli.options import WorkspaceOption


def ingest(
    paths: list[Path] = typer.Argument(..., help="Files or folders (searched recursively)."),
    workspace: Path = WorkspaceOption,
    chunker: str = typer.Option("sentences", help="tokens | sentences | paragraphs | semantic"),
    chunk_size: int = typer.Option(240, help="Maximum chunk size, in the embedder's tokens."),
    overlap: int = typer.Option(0, help="Overlap between consecutive chunks, in tokens."),
    embedder: str = typer.Option(None, help="Embedding model: bundled name, local folder or hub id (default: the "
                                 "one the index was built or re-embedded with, else the bundled MiniLM)."),
    format: str = typer.Option(
        "auto", help="auto | text | markdown | html | pdf | json | jsonl | hotpotqa | squad | nq | qa-jsonl (the "
        "documents of a generic QA JSONL file, as eval and synth read it) | beir (a BEIR corpus.jsonl; a BEIR folder "
        "is recognised: its corpus is indexed under BEIR's _id as doc_id) (auto: by extension and content)"
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
    """Parse, chunk, embed and index documents (txt, md, html, pdf, json, jsonl, HotpotQA, SQuAD, NQ, BEIR).

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
        fail(str(exc).splitlines()[0] if "validation error" not in str(exc) else pydantic_message(exc))
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing and len(missing) == len(paths):
        fail(f"no such file or folder: {shown(', '.join(missing))}")

    from ragtune.progress import Reporter

    # A bar on a terminal, a plain line every ~10 s or 5% in a log (a long ingest is never silent), also in ingest.log.
    Path(workspace).mkdir(parents=True, exist_ok=True)
    with Reporter("embedding", unit="chunks", log_file=Path(workspace) / "ingest.log") as bar:
        interrupted = InterruptLatch()

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
            fail(shown(str(exc)))
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {shown(warning)}")
    failed = f", {summary.failed} failed" if summary.failed else ""
    console.print(
        f"[green]ingested[/] {summary.files_loaded} files ({summary.documents} documents), "
        f"[yellow]skipped[/] {len(summary.skipped)} files, {summary.warned} warnings · documents: {summary.new} new, "
        f"{summary.updated} updated, {summary.unchanged} unchanged, {summary.removed} removed{failed} · chunks: "
        f"{summary.chunks_added} added, {summary.chunks_total} in index · {summary.seconds:.1f}s · workspace "
        f"{shown(str(workspace))}"
    )
    for level, rows in summary.levels.items():
        console.print(f"[green]level[/] {level}: {rows} rows ({summary.stage_seconds.get(level, 0.0):.1f}s)")


def register(app: typer.Typer) -> None:
    """Add `ingest` to the main app."""
    app.command("ingest")(ingest)
