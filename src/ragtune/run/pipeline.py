"""`ragtune run`'s loop: each configured stage in order, skipped when nothing it depends on changed.

A stage's key is the hash of its settings, of the contents of its input files, and of the recorded outputs of the
earlier stages it reads. It is computed right before the stage would run (after the stages before it ran), so a
re-synthesised RAFT file changes the key of train, and train's new adapter the key of compare.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.run.config import STAGES, RunConfig
from ragtune.run.stages import PLANS, RUNNERS, Context, StageError
from ragtune.run.state import RunState, content_hashes, settings_hash


@dataclass
class RunSummary:
    """Which stages ran, which were skipped, and how long the run took."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def select_stages(
    cfg: RunConfig, only: Sequence[str] = (), from_stage: str | None = None
) -> tuple[list[str], set[str]]:
    """(the stages to consider, in order; the stages forced to run). `--from X` forces X and every later stage."""
    enabled = cfg.enabled()
    for name in [*only, *([from_stage] if from_stage else [])]:
        if name not in STAGES:
            raise StageError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        if name not in enabled:
            raise StageError(f"stage {name!r} is not configured in this file (configured: {', '.join(enabled)})")
    chosen = [s for s in enabled if not only or s in only]
    forced = set(enabled[enabled.index(from_stage):]) if from_stage else set()
    return chosen, forced


def run_pipeline(
    cfg: RunConfig,
    say: Callable[[str], None],
    only: Sequence[str] = (),
    from_stage: str | None = None,
    force: bool = False,
    after_stage: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run the configured stages; a stage whose key matches its finished record is skipped with a line saying so.
    Raises StageError (with the stage's message) or KeyboardInterrupt; finished stages stay recorded either way."""
    started = time.perf_counter()
    workspace = cfg.workspace_dir
    workspace.mkdir(parents=True, exist_ok=True)
    state = RunState(workspace)
    chosen, forced = select_stages(cfg, only, from_stage)
    summary = RunSummary()
    for stage in chosen:
        plan = PLANS[stage](cfg)
        inputs = content_hashes(plan.inputs)
        settings = settings_hash(plan.settings)
        upstream = {s: state.output_digest(s) for s in plan.upstream if s in cfg.enabled()}
        key = settings_hash({"settings": settings, "inputs": inputs, "upstream": upstream})
        if not (force or stage in forced) and state.unchanged(stage, key):
            what = [f"settings, {len(inputs)} input file{'s' if len(inputs) != 1 else ''}" if inputs else "settings"]
            if upstream:
                what.append(f"outputs of {', '.join(upstream)}")
            say(f"{stage}: unchanged ({' and '.join(what)}), skipped")
            summary.skipped.append(stage)
        else:
            resume = not (force or stage in forced) and state.interrupted(stage, key)
            previous = state.get(stage)
            why = ("resuming an interrupted run" if resume else "forced" if force or stage in forced
                   else "first run" if previous is None else _changed(previous, settings, inputs, upstream))
            say(f"{stage}: running ({why})")
            state.start(stage, key, settings, inputs, upstream)
            t0 = time.perf_counter()
            outcome = RUNNERS[stage](cfg, Context(workspace, resume, say))
            state.finish(stage, outcome.outputs, outcome.present)
            say(f"{stage}: done in {time.perf_counter() - t0:.1f}s" + (f": {outcome.summary}"
                                                                       if outcome.summary else ""))
            summary.ran.append(stage)
        if after_stage is not None:
            after_stage(stage)
    summary.seconds = time.perf_counter() - started
    return summary


def _changed(previous: object, settings: str, inputs: dict[str, str], upstream: dict[str, str]) -> str:
    """Why a recorded stage runs again, in words."""
    from ragtune.run.state import StageRecord

    assert isinstance(previous, StageRecord)
    if previous.status != "done":
        return "an earlier attempt under other settings did not finish"
    reasons = []
    if previous.settings != settings:
        reasons.append("settings changed")
    if previous.inputs != inputs:
        changed = sorted(set(previous.inputs) ^ set(inputs)
                         | {p for p in inputs if previous.inputs.get(p) != inputs[p]})
        reasons.append(f"input changed: {Path(changed[0]).name}" + (f" and {len(changed) - 1} more"
                                                                     if len(changed) > 1 else ""))
    moved = [s for s in upstream if previous.upstream.get(s) != upstream[s]]
    if moved:
        reasons.append(f"new outputs of {', '.join(moved)}")
    return ", ".join(reasons) or "its outputs changed or are gone"
