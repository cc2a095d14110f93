"""`ragtune init` and `ragtune run`: the whole chain from one YAML file.

`ragtune.run` is the library (config, stages, state); this module only parses, calls it and prints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from ragtune.cli.common import console
from ragtune.cli.options import workspace_option

if TYPE_CHECKING:
    from ragtune.run.config import RunConfig

CONFIG_NAME = "ragtune.yaml"


def init_command(
    folder: Path = typer.Argument(Path("."), help="Folder to write ragtune.yaml into (created if missing)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing ragtune.yaml."),
) -> None:
    """Write a commented starter ragtune.yaml: your documents in docs/, RAFT data from a teacher, RAFT-LoRA, and a
    before / after report. Edit it, then `ragtune run ragtune.yaml`."""
    from ragtune.run.starter import STARTER

    target = folder / CONFIG_NAME
    if target.exists() and not force:
        console.print(f"[bold red]error:[/] {escape(str(target))} exists; pass --force to replace it")
        raise typer.Exit(2)
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(STARTER, encoding="utf-8")
    docs = folder / "docs"
    hint = "" if docs.exists() else f" Put your documents in {docs}/ (or change ingest.paths)."
    console.print(f"[green]wrote[/] {escape(str(target))}.{escape(hint)} Then: ragtune run {escape(str(target))}")


def run_command(
    config: Path = typer.Argument(..., help="The ragtune.yaml to run (`ragtune init` writes a starter)."),
    only: list[str] = typer.Option(None, "--only", help="Run only this stage (repeatable): ingest, search, synth, "
                                   "train, retriever, compare. Unchanged ones are still skipped."),
    from_stage: str = typer.Option(None, "--from", help="Re-run this stage and every stage after it, even if "
                                   "unchanged."),
    force: bool = typer.Option(False, "--force", help="Re-run every selected stage, even if unchanged."),
    workspace: Path = workspace_option(None, help="Override workspace.path of the file.", envvar=None),
    check: bool = typer.Option(False, "--check", help="Validate the file and list the stages; run nothing."),
) -> None:
    """Run the chain a ragtune.yaml describes: ingest -> search -> synth -> train -> retriever -> compare/report.

    A stage whose settings, input files (content hashes) and earlier stages' outputs are unchanged is skipped, with
    a line saying so. Interrupted (Ctrl-C, kill -9)? Run the same command again: finished stages are skipped and
    the interrupted one resumes from its own progress. Progress lines also go to WORKSPACE/run.log; what each stage
    ran under is kept in WORKSPACE/run_state.json.
    """
    from ragtune.progress import Reporter
    from ragtune.run.config import ConfigError, load_config
    from ragtune.run.pipeline import run_pipeline, select_stages
    from ragtune.run.stages import StageError

    try:
        cfg = load_config(config)
        if workspace is not None:
            cfg.workspace.path = workspace.resolve()
        stages, _ = select_stages(cfg, only or (), from_stage)
    except (ConfigError, StageError) as exc:
        for line in str(exc).splitlines():
            console.print(f"[bold red]error:[/] {escape(line)}")
        raise typer.Exit(2) from None
    if check:
        console.print(f"[green]valid[/]: {escape(str(config))}; stages: {', '.join(stages)}; workspace "
                      f"{escape(str(cfg.workspace_dir))}")
        return
    ws = cfg.workspace_dir
    ws.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # plain lines (no bar): each stage draws its own progress between them
    with Reporter("ragtune run", total=len(stages), unit="stages", log_file=ws / "run.log", tty=False) as bar:
        bar.note(f"ragtune run {config} · workspace {ws} · stages {', '.join(stages)}")
        bar.note(_models_line(cfg))
        try:
            summary = run_pipeline(cfg, bar.note, only or (), from_stage, force, after_stage=lambda s: bar.advance())
        except KeyboardInterrupt:
            bar.note("interrupted: finished stages are kept; run the same command again to resume.")
            raise typer.Exit(130) from None
        except StageError as exc:
            bar.note(f"error: {exc}")
            raise typer.Exit(1) from None
        skipped = f", {len(summary.skipped)} skipped ({', '.join(summary.skipped)})" if summary.skipped else ""
        bar.note(f"ragtune run: {len(summary.ran)} stages ran{skipped} in {time.perf_counter() - started:.1f}s")


def _models_line(cfg: RunConfig) -> str:
    """Which generator and embedder the run uses, and where their files are (what `ragtune models` shows)."""
    from ragtune import models as m

    parts = []
    for role, resolve in (("generator", lambda: m.resolve_generator(cfg.train.model if cfg.train else None,
                                                                      convert=False)),
                          ("embedder", lambda: m.resolve_embedder(cfg.ingest.embedder))):
        try:
            r = resolve()
            parts.append(f"{role} {r.reference} ({r.source}: {r.path})")
        except m.ModelNotFoundError as exc:
            parts.append(f"{role}: {exc}")
    return "models: " + " · ".join(parts)


def register(app: typer.Typer) -> None:
    """Add `init` and `run` to the main app."""
    app.command("init")(init_command)
    app.command("run")(run_command)
