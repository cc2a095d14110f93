"""A rich progress bar for long training work, and the trainer callback that drives it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

console = Console(stderr=True, soft_wrap=True)


class Bar:
    """`update(done, total)` on one task; a no-op when progress display is off (tests, benchmarks)."""

    def __init__(self, progress: Progress | None, description: str):
        self.progress = progress
        self.task = progress.add_task(description, total=None, info="") if progress else None

    def update(self, done: int, total: int | None = None, **fields: Any) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=done, total=total, **fields)


@contextlib.contextmanager
def bar(description: str, enabled: bool) -> Iterator[Bar]:
    if not enabled:
        yield Bar(None, description)
        return
    with Progress(
        TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    ) as progress:
        yield Bar(progress, description)


class StepCallback(TrainerCallback):
    """Moves a Bar with the trainer's global step and shows the last logged loss."""

    def __init__(self, progress_bar: Bar):
        self.bar = progress_bar
        self.loss: float | None = None
        self.losses: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        info = f"loss {self.loss:.4f}" if self.loss is not None else ""
        self.bar.update(state.global_step, state.max_steps, info=info)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
            self.losses.append(self.loss)
