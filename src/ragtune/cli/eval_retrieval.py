"""`ragtune eval-retrieval`: nDCG@10, recall@10/100 and MRR@10 of the workspace's search on a BEIR-format set, per
mode and per retriever (`ragtune.eval.retrieval`). A command of its own rather than `eval --setting retrieval`:
`eval` answers questions with a generator and scores the answers, this one scores rankings against qrels and loads no
generator at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from ragtune.cli import options as opt
from ragtune.cli.common import console, fail, out, shown
from ragtune.cli.options import WorkspaceOption, json_option

SPLIT_HELP = ("Qrels split to score: train | dev | test (qrels/SPLIT.tsv). Default: test, else dev (a held-out split "
              "built by scripts/build_beir.py).")


def _split_of(folder: Path, split: str | None) -> str:
    from ragtune.datasets.beir import qrels_files

    files = qrels_files(folder)
    if split:
        return split
    for name in ("test", "dev"):
        if name in files:
            return name
    fail(f"{shown(str(folder))} has no qrels/test.tsv or qrels/dev.tsv; pick a split with --split "
         f"(qrels here: {', '.join(files) or 'none'})")


def _retrievers(values: list[str] | None) -> dict[str, str | None]:
    """base (the index's embedder) plus each `--retriever [NAME=]PATH`, named after its folder when unnamed."""
    found: dict[str, str | None] = {"base": None}
    for value in values or []:
        name, _, path = value.rpartition("=") if "=" in value else ("", "", value)
        path_obj = Path(path).expanduser()
        if not (path_obj / "retriever.json").is_file() and not path_obj.is_dir():
            fail(f"--retriever {shown(value)}: no such retriever folder")
        name = name or path_obj.name
        if name in found:
            fail(f"--retriever {shown(value)}: the name {name!r} is taken; write NAME=PATH")
        found[name] = str(path_obj)
    return found


def _table(report, split: str) -> Table:
    table = Table(title=f"retrieval · {report.queries} queries ({split})", header_style="bold")
    for column in ("retriever", "mode", "nDCG@10", "R@10", "R@100", "MRR@10", "ms/query"):
        table.add_column(column, justify="left" if column in ("retriever", "mode") else "right")
    for name, modes in report.results.items():
        for mode, s in modes.items():
            table.add_row(name, mode, f"{s['ndcg@10']:.4f}", f"{s['recall@10']:.4f}", f"{s['recall@100']:.4f}",
                          f"{s['mrr@10']:.4f}", f"{s['ms_per_query']:.1f}")
    return table


def eval_retrieval(
    data: Path = typer.Argument(..., help="A BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv."),
    workspace: Path = WorkspaceOption,
    split: str = typer.Option(None, "--split", help=SPLIT_HELP),
    mode: list[str] = typer.Option(None, "--mode", help="dense | bm25 | hybrid, repeatable (default: all three)."),
    retriever: list[str] = typer.Option(None, "--retriever", help="A trained retriever folder (`ragtune train "
                                        "retriever`), as PATH or NAME=PATH; repeatable. Always scored beside base "
                                        "(the index's own embedder)."),
    rerank: str = opt.RerankOption,
    rerank_candidates: int = typer.Option(20, "--rerank-candidates", help="With --rerank: first-stage documents "
                                          "it reorders (BEIR reranks 100; the rest keep their first-stage rank)."),
    limit: int = typer.Option(None, "--limit", "-n", help="Score the first N queries of the split (sorted by id)."),
    ingest_data: bool = typer.Option(False, "--ingest", help="Index the BEIR corpus into the workspace first "
                                     "(incremental: a no-op when it is already there)."),
    out_file: Path = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    as_json: bool = json_option("Print the report as JSON on stdout: results.RETRIEVER.MODE.{ndcg@10, recall@10, "
                                "recall@100, mrr@10, n, ms_per_query}, coverage, split, queries."),
) -> None:
    """Score search on a BEIR-format set like BEIR and MTEB do: nDCG@10, recall@10, recall@100, MRR@10.

    One row per retriever (base, and each --retriever) and mode (dense, bm25, hybrid; `MODE+rerank` rows with
    --rerank). The corpus must be in the workspace under its BEIR ids: `ragtune ingest BEIR_DIR`, or --ingest.
    This is retrieval evaluation; `ragtune eval --setting retrieved` scores a generator's answers instead.
    """
    from ragtune.datasets import DatasetError
    from ragtune.datasets.beir import load_beir
    from ragtune.eval.retrieval import MODES, RetrievalEvalConfig, evaluate_retrieval
    from ragtune.progress import Reporter

    modes = list(dict.fromkeys(mode or MODES))
    if bad := [m for m in modes if m not in MODES]:
        fail(f"--mode {bad[0]!r}: choose from {', '.join(MODES)}")
    split_name = _split_of(data, split)
    try:
        beir = load_beir(data, splits=[split_name], corpus=False)
        queries, qrels = beir.split(split_name)
    except DatasetError as exc:
        fail(shown(str(exc)))
    if limit is not None:
        queries = queries[:limit]
        qrels = {q.query_id: qrels[q.query_id] for q in queries}
    if not queries:
        fail(f"no judged queries in {shown(str(data))} for split {split_name!r}")
    if ingest_data:
        from ragtune.index.ingest import ingest

        summary = ingest([data], workspace)
        console.print(f"[green]indexed[/] {summary.documents} documents ({summary.chunks_added} chunks embedded now)")
    config = RetrievalEvalConfig(retrievers=_retrievers(retriever), modes=modes, reranker=rerank,
                                 rerank_candidates=rerank_candidates)
    try:
        with Reporter("retrieval", unit="queries") as bar:
            report = evaluate_retrieval(workspace, queries, qrels, config,
                                        progress=lambda done, total: bar.update(done, total=total))
    except (ValueError, OSError, ImportError) as exc:
        fail(shown(str(exc)))
    coverage = report.coverage
    if coverage["indexed"] < coverage["relevant_docs"]:
        console.print(f"[yellow]warning:[/] {coverage['indexed']} of {coverage['relevant_docs']} relevant documents "
                      f"are in the index: ingest the corpus (`ragtune ingest {shown(str(data))}`) or pass --ingest")
    for note in report.notes:
        console.print(f"note: {note}")
    payload = {"data": str(data), "split": split_name, **report.model_dump(exclude={"per_query"})}
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        out.print(_table(report, split_name))


def register(app: typer.Typer) -> None:
    """Add `eval-retrieval` to the main app."""
    app.command("eval-retrieval")(eval_retrieval)
