"""The retriever trainers' progress: the foundation's `ragtune.progress.Reporter` (a bar on a terminal, throttled
plain lines in a log, like every other stage), and the trainer callback that drives it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from transformers import TrainerCallback

from ragtune.progress import Reporter


class Bar:
    """`update(done, total)` with the total positional, the shape `reembed_index(progress=...)` and the LM scorer
    call; silent when progress display is off (tests, benchmarks)."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter

    def update(self, done: int, total: int | None = None, **fields: Any) -> None:
        self.reporter.update(done, total=total, **fields)


@contextlib.contextmanager
def bar(description: str, enabled: bool) -> Iterator[Bar]:
    with Reporter(description, enabled=enabled) as reporter:
        yield Bar(reporter)


class StepCallback(TrainerCallback):
    """Moves a Bar with the trainer's global step and shows the last logged loss."""

    def __init__(self, progress_bar: Bar):
        self.bar = progress_bar
        self.loss: float | None = None
        self.losses: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar.update(state.global_step, state.max_steps, loss=self.loss)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
            self.losses.append(self.loss)
