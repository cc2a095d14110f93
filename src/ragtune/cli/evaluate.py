"""`ragtune eval` and `ragtune compare`: the commands that prove (or disprove) that tuning helped.

Output folders: `WORKSPACE/eval/<run-name>/` (scores.json, predictions.jsonl, manifest.json).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ragtune.cli import options as opt
from ragtune.cli.common import console, out, pydantic_message, settings_from_options
from ragtune.cli.common import fail as _fail
from ragtune.cli.options import WorkspaceOption, engine_option, json_option
from ragtune.progress import Reporter
from ragtune.workspace import Workspace

if TYPE_CHECKING:
    from ragtune.eval.compare import Comparison

DATA_HELP = (
    "FORMAT PATH: the questions. FORMAT is hotpotqa (official JSON), squad (1.1/2.0 JSON), nq (NQ-oracle JSONL, "
    "may be .gz), jsonl (generic: question, answer(s), documents) or raft (a `ragtune synth` RAFT file; its "
    "held-out split)."
)
SETTING_HELP = (
    "closed-book: the question alone; oracle: gold documents + K distractors; retrieved: top-k from the "
    "workspace index."
)
DISTRACTORS_HELP = "Oracle setting: K distractors, or a sweep such as 0..9 or 0,2,4 (the robustness curve)."


def _progress(label: str, total: int) -> Reporter:
    """A bar on a terminal; plain, throttled `label: done/total (pct) rate/s ETA` lines in a log (make demo, CI)."""
    return Reporter(label, total=total, unit="questions")


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


def _data(data: tuple[str, Path] | None, split: str) -> tuple[str, Path]:
    if not data or data[0] is None:
        _fail("--data FORMAT PATH is required, e.g. --data hotpotqa data/hotpot_dev.json")
    if split not in ("eval", "train", "all"):
        _fail(f"--split must be eval, train or all, not {split!r}")
    return data


def _load_items(data: tuple[str, Path] | None, split: str, limit: int | None):
    from ragtune.datasets import DatasetError
    from ragtune.eval.compare import load_questions

    fmt, path = _data(data, split)
    try:
        return load_questions(fmt, path, split, limit, warn=_warn)
    except DatasetError as exc:
        _fail(str(exc))


def _scores_table(title: str, scores: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in scores.items():
        if isinstance(value, dict | list):
            continue
        if isinstance(value, float):
            shown = f"{value:.2f}" if "seconds" in key or key.endswith("_s") or "per_" in key else f"{value:.4f}"
        elif value is None and key == "no_answer_tag_rate":
            shown = "n/a (prompt asks for no tag)"
        else:
            shown = "–" if value is None else str(value)
        table.add_row(key, shown)
    return table


@opt.with_search_options
def eval_command(
    workspace: Path = WorkspaceOption,
    data: tuple[str, Path] = typer.Option(None, "--data", help=DATA_HELP, show_default=False),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Generator: bundled name, local folder, .gguf, hub id "
        "or openai:NAME. Default: the bundled SmolLM2-135M-Instruct.",
    ),
    adapter: str = typer.Option(None, "--adapter", help="A LoRA adapter folder (e.g. from `ragtune train`)."),
    setting: str = typer.Option("oracle", "--setting", "-s", help=SETTING_HELP),
    distractors: str = typer.Option("0", "--distractors", help=DISTRACTORS_HELP),
    k: int = typer.Option(5, "-k", "--top-k", help="Retrieved setting: number of chunks shown."),
    mode: str = typer.Option("hybrid", "--mode", help="Retrieved setting: hybrid | dense | bm25."),
    search: dict[str, Any] = opt.SearchOptions,
    prompt: str = typer.Option(
        "short",
        "--prompt",
        help="short: answer only; cot: the RAFT chain-of-thought student prompt (quotes, then <ANSWER>:).",
    ),
    split: str = typer.Option("eval", "--split", help="eval | train | all: the hash split shared with synthesis."),
    limit: int = typer.Option(None, "--limit", "-n", help="Evaluate the first N questions (sorted by id)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Questions per generation batch (length-sorted)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Default: 32 (short), 256 (cot)."),
    seed: int = typer.Option(0, "--seed", help="Seed of distractor draws and generation."),
    dtype: str = typer.Option(None, "--dtype", help="Local model dtype (default float32 on CPU): auto (bfloat16 on "
                              "CPUs with AVX512-BF16 or AMX, ~2x faster generation) | float32 | bfloat16 | float16."),
    engine: str = engine_option(),
    run_name: str = typer.Option(None, "--run-name", help="Folder name under WORKSPACE/eval/ (default: derived)."),
    ingest_data: bool = typer.Option(
        False,
        "--ingest",
        help="Retrieved setting: index the data file's documents into the workspace first (HotpotQA, SQuAD, NQ).",
    ),
    as_json: bool = json_option("Print the scores as JSON on stdout (keys em, f1, ...)."),
) -> None:
    """Answer a QA set with one model and score it: EM / F1 (SQuAD normalisation), quote precision, oracle
    citations, unanswerable accuracy, retrieval recall@k / MRR / nDCG, latency and throughput.

    Deterministic: greedy decoding, fixed seeds, questions sorted by id. Interrupted? Run the same command again:
    finished batches are kept.
    """
    from ragtune.eval.compare import errors
    from ragtune.eval.runner import (
        SystemSpec,
        data_key,
        default_run_name,
        open_searcher,
        run_system,
        write_manifest,
    )

    items = _load_items(data, split, limit)
    fmt, path = data
    try:
        spec = settings_from_options(
            SystemSpec,
            name=run_name or "",
            model=model,
            adapter=adapter,
            setting=setting,
            distractors=distractors,
            k=k,
            retrieval_mode=mode,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            seed=seed,
            dtype=dtype,
            engine=_engine(engine),
            search=search or None,
        )
        settings = spec.settings(batch_size)
        ks = spec.ks()
    except ValueError as exc:  # --batch-size: checked by EvalSettings
        _fail(pydantic_message(exc))
    if adapter and not Path(adapter).exists():
        _fail(f"adapter folder not found: {adapter}")
    from ragtune.models import default_generator

    name = run_name or default_run_name(model or default_generator(), adapter, fmt, settings, ks, split, limit)
    if spec.explicit_dtype and not run_name:
        name += f"-{spec.explicit_dtype}"
    if spec.engine and spec.engine != "transformers" and not run_name:
        name += f"-{spec.engine}"
    ws = Workspace(workspace).ensure()
    run_dir = ws.eval_dir(name)
    started = time.perf_counter()
    try:
        searcher = None
        if setting == "retrieved":
            searcher = open_searcher(ws, path if ingest_data else None, fmt, settings.search)
        with _progress(name[:40], len(items) * len(ks)) as bar:

            def progress(done: int, total: int) -> None:
                bar.update(done, total=total)

            result = run_system(spec, items, ws, run_dir, batch_size, searcher, progress, data_key=data_key(path))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished batches are kept; run the same command again to resume.")
        raise typer.Exit(130) from None
    except errors() as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    seconds = time.perf_counter() - started
    write_manifest(
        ws,
        name,
        run_dir,
        path,
        spec.describe(),
        result.scores,
        len(items),
        seconds,
        {"data": {"format": fmt, "path": str(path), "split": split, "limit": limit}},
    )
    if as_json:
        out.print_json(json.dumps({**result.scores, "run_dir": str(run_dir)}, default=str))
        return
    scores = {k: v for k, v in result.scores.items() if k != "by_distractors"}
    out.print(_scores_table(f"{name} ({len(items)} questions)", scores))
    if len(ks) > 1:
        curve = Table(title="F1 against the number of distractors", header_style="bold")
        for kk in ks:
            curve.add_column(f"K={kk}", justify="right")
        curve.add_row(*(f"{100 * (result.curve[kk].get('f1') or 0):.1f}" for kk in ks))
        out.print(curve)
    console.print(f"[green]wrote[/] {run_dir} · {seconds:.1f}s")


def _engine(engine: str | None) -> str | None:
    from ragtune.eval.compare import check_engine

    try:
        return check_engine(engine)
    except ValueError as exc:
        _fail(str(exc))


def _read_systems(path: Path) -> list[Any]:
    import yaml

    from ragtune.eval.runner import system_specs

    if not path.is_file():
        _fail(f"systems file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        _fail(f"{path}: not valid YAML ({str(exc).splitlines()[0]})")
    defaults: dict[str, Any] = {}
    if isinstance(raw, dict):
        defaults = dict(raw.get("defaults") or {})
        raw = raw.get("systems")
    if not isinstance(raw, list) or not raw:
        _fail(f"{path}: expected a list of systems (or a mapping with 'systems:' and optional 'defaults:')")
    try:
        return system_specs(raw, defaults)
    except ValueError as exc:
        _fail(f"{path}: {exc}")


def compare_command(
    workspace: Path = WorkspaceOption,
    systems: Path = typer.Option(
        ...,
        "--systems",
        help="YAML: a list of systems (name, model, adapter, setting, "
        "distractors, k, mode, prompt, max_new_tokens), optionally under 'systems:' with "
        "shared 'defaults:'.",
    ),
    data: tuple[str, Path] = typer.Option(None, "--data", help=DATA_HELP, show_default=False),
    out_dir: Path = typer.Option(Path("report"), "--out", "-o", help="Report folder."),
    split: str = typer.Option("eval", "--split", help="eval | train | all."),
    limit: int = typer.Option(None, "--limit", "-n", help="Evaluate the first N questions (sorted by id)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Questions per generation batch."),
    title: str = typer.Option("ragtune comparison", "--title", help="Report title."),
    as_json: bool = json_option("Print every system's scores as JSON on stdout."),
    engine: str = engine_option(" For the systems that name none."),
) -> None:
    """Run several systems on the same questions and write one report: report.md, report.json, f1_per_system.png,
    f1_vs_k.png, a self-contained report.html and per-question outputs.
    """
    from ragtune.eval.compare import compare_systems, errors

    specs = _read_systems(systems)
    fmt, path = _data(data, split)
    try:
        result = compare_systems(specs, fmt, path, workspace, out_dir, split=split, limit=limit, batch_size=batch_size,
                                 title=title, engine=engine, warn=_warn)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished batches are kept; run the same command again to resume.")
        raise typer.Exit(130) from None
    except errors() as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if as_json:
        out.print_json(json.dumps({r.name: r.scores for r in result.reports}, default=str))
    else:
        _print_tables(result, title)
    console.print(f"[green]wrote[/] {result.paths['html']} (and report.md, report.json, PNGs, per-question outputs)")


def _print_tables(result: Comparison, title: str) -> None:
    from ragtune.eval.report import headline_rows, paired_rows

    header, rows = headline_rows(result.reports)
    table = Table(title=title, header_style="bold")
    for h in header:
        table.add_column(h)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    # Piped into a log (make demo, CI) rich assumes 80 columns and folds every cell to a few letters; a log has no
    # width limit, so the table keeps its natural width there.
    printer = out if out.is_terminal else Console(width=240)
    printer.print(table)
    paired_header, paired_table = paired_rows(result.comparisons)
    if paired_table:
        sig = result.comparisons["significance"]
        significance = Table(
            title=f"Paired differences, points (95% bootstrap CI, {sig['resamples']:,} resamples over questions)",
            header_style="bold",
        )
        for h in paired_header:
            significance.add_column(h)
        for row in paired_table:
            significance.add_row(*(escape(cell) for cell in row))
        printer.print(significance)


def register(app: typer.Typer) -> None:
    """Add `eval` and `compare` to the main app."""
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
