"""`ragtune train ...`: one typer group holding the generator trainers (sft, dpo, dap: `train_generator`) and the
retriever trainers (retriever, reranker: `train_retriever`). Both are imported plainly: a trainer module that fails
to import is an error, not a missing command."""

from __future__ import annotations

import typer

from ragtune.cli import train_generator, train_retriever

train_app = typer.Typer(
    help="Train the generator (sft, dpo, dap) or the retriever (retriever, reranker) on workspace data.",
    no_args_is_help=True,
    add_completion=False,
)
train_generator.register(train_app)
train_retriever.register(train_app)


def register(app: typer.Typer) -> None:
    """Add the `train` group to the main app."""
    app.add_typer(train_app, name="train")
