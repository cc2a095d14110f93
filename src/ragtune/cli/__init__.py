"""The `ragtune` command: a thin typer front that parses options, calls a stage, and prints with rich.

Every command lives in this package, one module per stage (`ingest`, `search`, `models`, `synth`, `evaluate`,
`eval_retrieval`, `train`, `export_model`, `serve` (with `tenants`), `run`), and is registered below by name. The
imports are plain: a command module that fails to import is an error at start-up, never a command that is silently
absent. Options several commands share are declared once in `ragtune.cli.options`; library modules import no typer
(an import-linter contract checks both).
"""

from __future__ import annotations

import os

import typer

from ragtune.cli import eval_retrieval, evaluate, export_model, ingest, models, run, search, serve, synth, train

app = typer.Typer(
    help="Fine-tune both halves of a RAG system on your own documents, and prove it helps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
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


# The order of `ragtune --help`: the pipeline's order.
COMMAND_MODULES = (ingest, search, models, synth, evaluate, eval_retrieval, train, export_model, serve, run)
for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:  # pragma: no cover - console entry for `python -m ragtune`
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
