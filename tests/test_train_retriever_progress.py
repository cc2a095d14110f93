"""The retriever trainers report progress through the foundation's Reporter: in a log (no terminal) a plain
`label: done/total ... loss X` line, like every other stage, and nothing at all when progress is off."""

from __future__ import annotations

from types import SimpleNamespace

from ragtune.train.retriever.progress import StepCallback, bar


def _train_three_steps(enabled: bool) -> list[float]:
    with bar("contrastive training", enabled) as b:
        callback = StepCallback(b)
        for step, loss in enumerate((2.5, 1.25, 0.75), start=1):
            callback.on_log(None, None, None, logs={"loss": loss})
            callback.on_step_end(None, SimpleNamespace(global_step=step, max_steps=3), None)
    return callback.losses


def test_steps_and_loss_reach_the_log_as_plain_lines(capsys):
    assert _train_three_steps(True) == [2.5, 1.25, 0.75]
    err = capsys.readouterr().err
    assert "contrastive training: 3/3 (100%)" in err and "loss 0.75" in err
    assert "\r" not in err  # a log file gets lines, not a redrawn bar


def test_progress_off_prints_nothing(capsys):
    assert _train_three_steps(False) == [2.5, 1.25, 0.75]
    assert capsys.readouterr().err == ""
