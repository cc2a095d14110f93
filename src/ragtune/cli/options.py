"""Options that several commands take, declared once so their names, defaults and help never drift apart.

The search options (`--retriever`, `--rerank`, `--transform`, `--window`, `--parent`, `--route`, ...) are shared by
every command that searches (`ragtune search`, `ragtune eval --setting retrieved`); each maps to a `SearchConfig`
field through `ragtune.retrieve.options.search_overrides`, the library half that imports no typer.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ragtune.retrieve.options import search_overrides as search_overrides  # what the commands call with the values
from ragtune.workspace import DEFAULT_WORKSPACE

WORKSPACE_ENV = "RAGTUNE_WORKSPACE"
WORKSPACE_HELP = "Folder holding the index and every artifact."


def workspace_option(default: Any = DEFAULT_WORKSPACE, help: str = WORKSPACE_HELP,
                     envvar: str | None = WORKSPACE_ENV) -> Any:
    """`--workspace / -w`. The default is the workspace folder (also $RAGTUNE_WORKSPACE); `...` makes it required
    (the synth and retriever trainers, which write into an existing index's workspace); None means "not given"."""
    return typer.Option(default, "--workspace", "-w", help=help, envvar=envvar)


def json_option(help: str) -> Any:
    """`--json`: machine-readable output on stdout instead of the rich table (the help says what is printed)."""
    return typer.Option(False, "--json", help=help)


WorkspaceOption = workspace_option()

ENGINE_HELP = ("Local generation engine: transformers (default) | ct2 | llamacpp (the GGUF itself; pip install "
               "llama-cpp-python) | vllm (GPU; pip install vllm).")


def engine_option(extra_help: str = "") -> Any:
    """`--engine` (also $RAGTUNE_ENGINE): which local engine generates."""
    return typer.Option(None, "--engine", help=ENGINE_HELP + extra_help, envvar="RAGTUNE_ENGINE")


RetrieverOption = typer.Option(None, "--retriever", help="A trained retriever folder (`ragtune train retriever`): "
                               "its query encoder embeds the query for the dense leg.")
RerankOption = typer.Option(None, "--rerank", help="Rerank the top --rerank-candidates hits: a cross-encoder (PATH or "
                            "cross-encoder:PATH, a `ragtune train reranker` folder or hub id) or an LLM judging "
                            "relevance by P(yes) (llm:MODEL; llm: alone is the bundled model).")
RerankCandidatesOption = typer.Option(20, "--rerank-candidates", help="With --rerank: first-stage hits it reads.")
RerankGateOption = typer.Option(True, "--rerank-gate/--no-rerank-gate", help="With --rerank FOLDER: apply the gate "
                                "`train reranker --gate` calibrated (rerank only when the first stage's top-1 minus "
                                "top-2 score is below its threshold); --no-rerank-gate reranks every query.")
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

# The search options in the order `search_overrides` takes them (and `--help` lists them): (parameter, type, option).
SEARCH_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("retriever", Path, RetrieverOption),
    ("rerank", str, RerankOption),
    ("rerank_candidates", int, RerankCandidatesOption),
    ("rerank_gate", bool, RerankGateOption),
    ("transform", str, TransformOption),
    ("transform_model", str, TransformModelOption),
    ("window", int, WindowOption),
    ("parent", bool, ParentOption),
    ("parent_level", str, ParentLevelOption),
    ("route", str, RouteOption),
)
SearchOptions: Any = None  # the default of a command's `search` parameter, which `with_search_options` replaces


def with_search_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command every search option, declared once: its `search: dict = SearchOptions` parameter is replaced,
    in place (so `--help` lists the options where the parameter stood), by `--retriever`, `--rerank`, ... `--route`,
    and the command is called with `search=` the `SearchConfig` overrides they make (`search_overrides`)."""
    signature = inspect.signature(command)
    params = list(signature.parameters.values())
    at = [p.name for p in params].index("search")
    kind = params[at].kind
    searched = [inspect.Parameter(name, kind, default=option, annotation=type_)
                for name, type_, option in SEARCH_OPTIONS]

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        values = [kwargs.pop(name) for name, _, _ in SEARCH_OPTIONS]
        return command(**kwargs, search=search_overrides(*values))

    run.__signature__ = signature.replace(parameters=params[:at] + searched + params[at + 1 :])  # type: ignore[attr-defined]
    hints = {k: v for k, v in inspect.get_annotations(command, eval_str=True).items() if k != "search"}
    run.__annotations__ = hints | {name: type_ for name, type_, _ in SEARCH_OPTIONS}
    return run
