"""Several systems on the same questions, and one report: what `ragtune compare` and the compare stage of
`ragtune run` both call, so the two can never run a comparison differently.

Each system's answers are kept under `WORKSPACE/compare/<system>-<format>-<split>-n<limit>/` (resumable: an
interrupted comparison keeps its finished batches), with its manifest and every record of a sweep; the report
(report.md / .html / .json and the plots) goes to `out_dir`. Nothing here prints: progress goes through
`ragtune.progress.Reporter`, warnings through the caller's `warn`, and the caller shows the tables it wants.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.datasets.base import QAItem
from ragtune.eval.report import SystemReport
from ragtune.eval.runner import SystemSpec
from ragtune.workspace import Workspace

Warn = Callable[[str], None]


def errors() -> tuple[type[BaseException], ...]:
    """What a comparison (or one evaluation) raises for a mistake the user can fix: an unreadable data set, a model
    that is not there, a bad setting, a missing optional package. Callers turn these into one line."""
    from ragtune.datasets import DatasetError
    from ragtune.models import ModelNotFoundError

    return (DatasetError, ModelNotFoundError, FileNotFoundError, ValueError, OSError, ImportError, NotImplementedError)


def load_questions(data_format: str, path: str | Path, split: str = "eval", limit: int | None = None,
                   warn: Warn | None = None) -> list[QAItem]:
    """The questions of one split of a QA file, sorted by id (the first `limit`); a file with none for the split
    is a DatasetError. Questions without a gold document are counted in one warning: the oracle setting shows them
    distractors only, and retrieval cannot be scored for them."""
    from ragtune.datasets import DatasetError, load_dataset

    items = load_dataset(data_format, path, split=split, limit=limit)  # type: ignore[arg-type]
    if not items:
        raise DatasetError(f"no questions in {path} for split {split!r}")
    missing_gold = sum(1 for item in items if not item.gold_docs)
    if missing_gold and warn is not None:
        warn(f"{missing_gold} of {len(items)} questions have no gold document: the oracle setting shows them "
             "distractors only, and retrieval cannot be scored for them.")
    return items


def check_engine(engine: str | None) -> str | None:
    """`engine` when it names a generation engine (None or "" for the default); ValueError otherwise."""
    from ragtune.llm import ENGINES

    if engine and engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINES)}")
    return engine or None


def compare_run_dir(ws: Workspace, system: str, fmt: str, split: str, limit: int | None) -> Path:
    """Where a comparison keeps one system's answers on one question set (`ragtune run` clears it when stale)."""
    from ragtune.eval.runner import slug

    return ws.compare_dir(slug(f"{system}-{fmt}-{split}-n{limit}"))


@dataclass
class Comparison:
    """What a comparison produced: each system's report, the paired differences, and the files written."""

    reports: list[SystemReport]
    comparisons: dict[str, Any]
    paths: dict[str, Path]

    def table_lines(self) -> list[str]:
        """The headline table and the paired differences as plain `a | b | c` lines (for a log)."""
        from ragtune.eval.report import headline_rows, paired_rows

        lines = []
        for header, rows in (headline_rows(self.reports), paired_rows(self.comparisons)):
            if rows:
                lines += [" | ".join(header), *(" | ".join(row) for row in rows)]
        return lines


def compare_systems(
    specs: Sequence[SystemSpec],
    data_format: str,
    data_path: str | Path,
    workspace: str | Path | Workspace,
    out_dir: str | Path,
    split: str = "eval",
    limit: int | None = None,
    batch_size: int = 8,
    title: str = "ragtune comparison",
    engine: str | None = None,
    progress: bool = True,
    warn: Warn | None = None,
) -> Comparison:
    """Run every system on the same questions of `data_path` and write the report to `out_dir`.

    `engine` is the generation engine of the systems that name none. Systems in the retrieved setting with the same
    search options share one searcher. Raises one of `errors()` for a mistake the user can fix; KeyboardInterrupt
    leaves every finished batch in place, so the same call resumes.
    """
    from ragtune.eval.report import paired_comparisons, write_report
    from ragtune.eval.runner import data_key, open_searcher, run_system, write_manifest
    from ragtune.progress import Reporter

    for spec in specs:
        spec.engine = check_engine(spec.engine or engine)
    items = load_questions(data_format, data_path, split, limit, warn)
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ws.ensure()
    key = data_key(data_path)
    data_info = {"format": data_format, "path": os.fspath(data_path), "split": split, "limit": limit}
    reports = []
    searchers: dict[str, Any] = {}  # one per distinct set of search options, shared by the systems that use it
    for spec in specs:
        with Reporter(spec.name[:40], total=len(items) * len(spec.ks()), unit="questions", enabled=progress) as bar:

            def step(done: int, total: int, bar: Reporter = bar) -> None:
                bar.update(done, total=total)

            searcher = None
            if spec.setting == "retrieved":
                search_key = json.dumps(spec.search or {}, sort_keys=True)
                searcher = searchers.get(search_key) or searchers.setdefault(
                    search_key, open_searcher(ws, search=spec.search))
            run_dir = compare_run_dir(ws, spec.name, data_format, split, limit)
            run = run_system(spec, items, ws, run_dir, batch_size, searcher, step, data_key=key)
            write_manifest(ws, f"compare-{run_dir.name}", run_dir, data_path, spec.describe(), run.scores, len(items),
                           run.seconds, {"data": data_info})
            reports.append(SystemReport(spec.name, spec.describe(), run.scores, run.records, run.curve,
                                        run.all_records))
            with open(run_dir / "all_predictions.jsonl", "w", encoding="utf-8") as f:
                for record in run.all_records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    comparisons = paired_comparisons(reports)
    paths = write_report(reports, out_dir, title=title, data={**data_info, "questions": len(items)},
                         comparisons=comparisons)
    return Comparison(reports, comparisons, paths)
