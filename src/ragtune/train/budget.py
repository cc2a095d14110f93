"""A time budget that never cuts a schedule: time the first steps, then fix the step count that fits.

Stopping "when N minutes are up" made the adapter depend on how busy the machine was: a run stopped in the middle
of its learning-rate decay (19 of 38 steps on a loaded demo machine) and the adapter looped. With `--max-minutes`,
ragtune instead times the first `TIMED_STEPS` optimiser steps (all inside the warm-up, so no decay has happened),
computes how many steps fit in the budget, and rebuilds the cosine schedule for that total, so warm-up and decay both
complete. The run then trains exactly that many steps, however the machine's load changes afterwards; the decision
is logged, written to `budget.json` in the run folder (a resumed run re-applies it) and to the run summary.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TIMED_STEPS = 3  # optimiser steps timed before deciding; the warm-up lasts at least this long in a budgeted run
SAFETY_MARGIN = 0.05  # share of the budget kept for checkpoints, logging, saving the adapter and timing noise
BUDGET_FILE = "budget.json"


@dataclass
class BudgetDecision:
    """How a `--max-minutes` budget became a step count; `steps` is what the schedule was set to."""

    budget_minutes: float
    planned_steps: int
    steps: int
    timed_steps: int
    seconds_per_step: float
    elapsed_seconds: float
    warmup_steps: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seconds_per_step(step_seconds: list[float]) -> float:
    """The per-step cost to plan with: the first step pays one-off costs (allocations, kernel selection), so it is
    left out whenever later steps were timed; the median of the rest resists one slow outlier."""
    if not step_seconds:
        raise ValueError("no timed steps")
    steady = step_seconds[1:] if len(step_seconds) > 1 else step_seconds
    return float(statistics.median(steady))


def fit_steps(
    planned_steps: int,
    budget_seconds: float,
    elapsed_seconds: float,
    done_steps: int,
    per_step: float,
    margin: float = SAFETY_MARGIN,
) -> int:
    """How many optimiser steps in total fit in the budget, given `done_steps` already taken in `elapsed_seconds`.

    Never more than the data / epochs plan, never fewer than the steps already taken.
    """
    if per_step <= 0:
        return planned_steps
    remaining = budget_seconds * (1.0 - margin) - elapsed_seconds
    extra = math.floor(remaining / per_step) if remaining > 0 else 0
    return max(done_steps, min(planned_steps, done_steps + extra))


def budget_warmup(warmup_ratio: float, planned_steps: int) -> int:
    """Warm-up steps of a budgeted run: the usual ratio of the plan, but at least the timed steps, so the schedule
    is changed before its decay begins and the learning rate never jumps."""
    return max(int(warmup_ratio * planned_steps), min(TIMED_STEPS, planned_steps))


def decide(
    budget_minutes: float,
    planned_steps: int,
    step_seconds: list[float],
    elapsed_seconds: float,
    warmup_steps: int,
) -> BudgetDecision:
    """The decision after the timed steps, with the sentence the log shows."""
    done = len(step_seconds)
    per_step = seconds_per_step(step_seconds)
    steps = fit_steps(planned_steps, 60.0 * budget_minutes, elapsed_seconds, done, per_step)
    head = f"timed {done} steps at {per_step:.1f} s/step"
    budget = f"{budget_minutes:g} min"
    if steps >= planned_steps:
        message = f"{head}: all {planned_steps} planned steps fit in {budget}; schedule unchanged"
    else:
        message = f"{head}: {steps} steps fit in {budget}; schedule set to {steps} steps (planned {planned_steps})"
    return BudgetDecision(
        budget_minutes=budget_minutes, planned_steps=planned_steps, steps=steps, timed_steps=done,
        seconds_per_step=round(per_step, 3), elapsed_seconds=round(elapsed_seconds, 2), warmup_steps=warmup_steps,
        message=message,
    )


def save_decision(folder: Path, decision: BudgetDecision) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BUDGET_FILE).write_text(json.dumps(decision.to_dict(), indent=2) + "\n", encoding="utf-8")


def load_decision(folder: Path) -> BudgetDecision | None:
    try:
        return BudgetDecision(**json.loads((folder / BUDGET_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def reschedule(scheduler: Any, optimizer: Any, warmup_steps: int, total_steps: int) -> None:
    """Give a running cosine LambdaLR a new warm-up and total, and apply it to the current step at once.

    The new factors come from transformers' own `get_scheduler` (built on a stand-in optimizer with the same parameter
    groups), so the shape is exactly the one a run planned for `total_steps` from the start would have had.
    """
    import torch
    from transformers import get_scheduler

    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the scheduler
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": g.get("initial_lr", g["lr"])}
              for g in optimizer.param_groups]
    fresh = get_scheduler("cosine", optimizer=torch.optim.SGD(groups), num_warmup_steps=warmup_steps,
                          num_training_steps=total_steps)
    inner.lr_lambdas = list(fresh.lr_lambdas)
    step = inner.last_epoch
    for group, base_lr, factor in zip(optimizer.param_groups, inner.base_lrs, inner.lr_lambdas, strict=True):
        group["lr"] = base_lr * factor(step)
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]
