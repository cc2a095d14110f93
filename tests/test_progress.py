"""The progress reporter off a terminal: plain lines every N seconds or N percent, whichever comes first.

A fake clock stands in for time passing (a test cannot wait 10 real seconds per line); the reporter itself, its
output stream and its log file are real.
"""

from __future__ import annotations

import io
import os
import stat

from ragtune.progress import Reporter, format_duration, tqdm_standin


class FakeClock:
    """Stands in for time.monotonic: the test moves time forward by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_lines_every_interval_seconds_when_progress_is_slow():
    clock, out = FakeClock(), io.StringIO()
    rep = Reporter("train", total=1000, unit="steps", interval=10, fraction=0.05, stream=out, tty=False, clock=clock)
    for step in range(1, 31):  # 1 step a second, 0.1% each: only the clock can trigger a line
        clock.now += 1
        rep.update(step, loss=1.5)
    assert lines(out) == [
        "train: 10/1000 steps (1%) 1.0/s ETA 16:30 loss 1.5",
        "train: 20/1000 steps (2%) 1.0/s ETA 16:20 loss 1.5",
        "train: 30/1000 steps (3%) 1.0/s ETA 16:10 loss 1.5",
    ]
    rep.close()
    assert len(lines(out)) == 3  # the last position was already printed


def test_lines_every_fraction_when_progress_is_fast():
    clock, out = FakeClock(), io.StringIO()
    rep = Reporter("embed", total=200, interval=10, fraction=0.05, stream=out, tty=False, clock=clock)
    for done in range(1, 201):  # 100 items a second: 5% (10 items) comes long before 10 s
        clock.now += 0.01
        rep.update(done)
    got = lines(out)
    assert len(got) == 20
    assert got[0] == "embed: 10/200 (5%) 100/s ETA 00:02"
    assert got[-1].startswith("embed: 200/200 (100%)") and "ETA 00:00" in got[-1]


def test_close_prints_the_final_position_and_log_file_is_private(tmp_path):
    clock, out = FakeClock(), io.StringIO()
    log = tmp_path / "logs" / "train.log"
    with Reporter("dap", total=100, interval=10, fraction=0.5, stream=out, tty=False, clock=clock,
                  log_file=log) as rep:
        clock.now += 2
        rep.update(7, tokens_per_second=123.4)
        rep.note("timed 3 steps")
    assert lines(out) == ["timed 3 steps", "dap: 7/100 (7%) 3.5/s ETA 00:27 tokens per second 123.4"]
    logged = log.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in logged] == lines(out)
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_unknown_total_and_tqdm_standin():
    clock, out = FakeClock(), io.StringIO()
    rep = Reporter("convert", interval=10, stream=out, tty=False, clock=clock)
    items = list(tqdm_standin(rep)(["a", "b", "c"], desc="Converting"))
    assert items == ["a", "b", "c"] and rep.done == 3 and rep.total == 3
    rep.close()
    assert lines(out)[-1].startswith("convert: 3/3 (100%)")


def test_disabled_reporter_prints_nothing_but_still_logs(tmp_path):
    out = io.StringIO()
    rep = Reporter("x", total=2, stream=out, tty=False, enabled=False, log_file=tmp_path / "x.log")
    rep.update(2)
    rep.close()
    assert out.getvalue() == "" and "x: 2/2 (100%)" in (tmp_path / "x.log").read_text()


def test_format_duration():
    assert format_duration(65) == "01:05"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(None) == "--:--"
