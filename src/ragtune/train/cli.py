"""`ragtune train ...`: one typer group; each trainer module registers its own commands on it.

`register(app)` adds the group to the main app. Trainer modules that are not present are simply absent, so the
generator and retriever trainers can grow independently.
"""

from __future__ import annotations

import importlib

import typer

train_app = typer.Typer(
    help="Train the generator (sft, dpo, dap) or the retriever (retriever, reranker) on workspace data.",
    no_args_is_help=True,
    add_completion=False,
)

# Each module defines `register(train_app)`.
_COMMAND_MODULES = ("ragtune.train.generator_cli", "ragtune.train.retriever_cli")


def register(app: typer.Typer) -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        module.register(train_app)
    app.add_typer(train_app, name="train")
