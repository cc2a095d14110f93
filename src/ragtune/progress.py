"""Progress a person can follow, on a terminal and in a log file; and keeping other libraries' chatter out of it.

`Reporter` draws one rich bar on a TTY. When stderr is not a terminal (a log file, CI, `nohup`), a bar would be
either invisible or thousands of carriage returns, so it prints plain lines instead, at most every `interval`
seconds or `fraction` of the total, whichever comes first:

    train sft: 12/55 (22%) 0.10/s ETA 07:10 loss 1.234 tokens/s 160

Every plain line also goes to `log_file` when one is given (created 0600), on a TTY too.

`quiet_libraries()` silences third-party FutureWarnings / UserWarnings and the progress bars of internal steps
(transformers' weight loading and GGUF conversion, datasets' map / filter, TRL's tokenisation) unless verbose mode
is on (`ragtune -v`, or RAGTUNE_VERBOSE=1, which subprocesses inherit).

Foundation module: it imports nothing from ragtune, so every stage may use it.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

VERBOSE_ENV = "RAGTUNE_VERBOSE"


# ---- verbosity -------------------------------------------------------------------------------------------------------


def set_verbose(on: bool) -> None:
    """Turn verbose mode on or off for this process and the processes it starts (through the environment)."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"
    quiet_libraries()


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0", "false", "no")


_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": ("error", "warning"),
    "HF_DATASETS_DISABLE_PROGRESS_BARS": ("1", "0"),
    "HF_HUB_DISABLE_PROGRESS_BARS": ("1", "0"),
}


def quiet_libraries() -> None:
    """Keep third-party warnings and internal progress bars out of ragtune's output, unless verbose.

    Idempotent and cheap (it imports nothing heavy): libraries already imported are set directly, the others through
    the environment variables they read when imported. Call it again after importing one to be sure.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    verbose = is_verbose()
    for name, (quiet, loud) in _QUIET_ENV.items():
        os.environ[name] = loud if verbose else quiet
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        if verbose:
            warnings.filterwarnings("default", category=category)
        else:
            # ragtune's own warnings still show: only those raised from inside other packages are silenced
            warnings.filterwarnings("ignore", category=category, module=r"^(?!ragtune)")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if verbose:
            hf_logging.set_verbosity_warning()
            hf_logging.enable_progress_bar()
        else:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils import logging as ds_logging

        if verbose:
            ds_logging.enable_progress_bar()
        else:
            ds_logging.disable_progress_bar()
            ds_logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if verbose else disable_progress_bars)()


# ---- the reporter ----------------------------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """mm:ss, or h:mm:ss past an hour; "--:--" when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 1:
        return f"{rate:.1f}"
    return f"{rate:.2f}"


def _field(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


class Reporter:
    """Progress of one task: a rich bar on a terminal, throttled plain lines elsewhere, and an optional log file.

    `update(done, **fields)` sets the position (or `advance(n)`); fields (loss=..., tokens_per_second=...) are shown
    after the ETA. `note(text)` prints a message without breaking the bar. Use it as a context manager, or call
    `close()`, which prints the final line. `clock` and `tty` exist so tests can drive it with a fake clock.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "",
        log_file: str | os.PathLike[str] | None = None,
        interval: float = 10.0,
        fraction: float = 0.05,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = interval
        self.fraction = fraction
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.clock = clock
        self.done = 0
        self.fields: dict[str, Any] = {}
        self.started = clock()
        self._start_done = 0
        self._last_emit_time = self.started
        self._last_emit_done = 0
        self._closed = False
        self._log: IO[str] | None = None
        if log_file is not None:
            path = Path(log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._log = os.fdopen(fd, "a", encoding="utf-8")
        is_tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._task: Any = None
        if enabled and is_tty:
            self._start_bar()

    # -- public API --

    def update(self, done: int | None = None, *, total: int | None = None, **fields: Any) -> None:
        """Set the position (and optionally a new total, and fields shown after the ETA)."""
        if total is not None:
            self.total = total
        if done is not None:
            self.done = done
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total, info=self._fields_text())
        now = self.clock()
        if self._due(now):
            self._emit_line(now)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.update(self.done + n, **fields)

    def restart_clock(self) -> None:
        """Measure rate and ETA from now on (e.g. after a resumed run skipped its finished steps)."""
        self.started = self._last_emit_time = self.clock()
        self._start_done = self._last_emit_done = self.done

    def note(self, message: str) -> None:
        """A message between progress lines (on a TTY, above the bar); also written to the log file."""
        if self.enabled:
            if self._bar is not None:
                self._bar.console.print(message, markup=False, highlight=False)
            else:
                print(message, file=self.stream, flush=True)
        self._write_log(message)

    def track(self, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        """Iterate, advancing by one per item."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        if total is not None:
            self.update(total=total)
        for item in iterable:
            yield item
            self.advance()

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate

    def line(self) -> str:
        """The plain progress line: `label: done/total (pct) rate/s ETA mm:ss fields`."""
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            head = f"{self.label}: {self.done}/{self.total}{unit} ({100 * self.done / self.total:.0f}%)"
        else:
            head = f"{self.label}: {self.done}{unit}"
        text = f"{head} {format_rate(self.rate())}/s ETA {format_duration(self.eta())}"
        extra = self._fields_text()
        return f"{text} {extra}" if extra else text

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total, info=self._fields_text())
            self._bar.stop()
            self._write_log(self.line())
        elif self._last_emit_done != self.done or self.done == 0:
            self._emit_line(self.clock())
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --

    def _fields_text(self) -> str:
        return " ".join(f"{k.replace('_', ' ')} {_field(v)}" for k, v in self.fields.items())

    def _due(self, now: float) -> bool:
        if now - self._last_emit_time >= self.interval:
            return True
        if self.total:
            return (self.done - self._last_emit_done) / self.total >= self.fraction
        return False

    def _emit_line(self, now: float) -> None:
        self._last_emit_time = now
        self._last_emit_done = self.done
        text = self.line()
        if self.enabled and self._bar is None:
            print(text, file=self.stream, flush=True)
        self._write_log(text)

    def _write_log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
            self._log.flush()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(self.unit), TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=Console(file=self.stream, force_terminal=True), transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, info="")


def tqdm_standin(reporter: Reporter) -> Callable[..., Iterator[Any]]:
    """A function with tqdm's call shape that reports into `reporter`: swap it for a library's module-level `tqdm`
    so its loop shows up as ragtune progress (and not as a second, differently formatted bar)."""

    def fake_tqdm(iterable: Iterable[Any], *args: Any, total: int | None = None, **kwargs: Any) -> Iterator[Any]:
        return reporter.track(iterable, total=total)

    return fake_tqdm
