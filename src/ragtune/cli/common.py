"""What every command prints with and fails with: the two consoles, the one-line error and exit code 2, text from
outside made safe to print, and a Ctrl-C that cannot be lost. Shared by the command modules of this package so an
error looks the same whichever command raised it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from pydantic import BaseModel

SettingsT = TypeVar("SettingsT", bound="BaseModel")

console = Console(stderr=True, soft_wrap=True)  # messages stay one line each: greppable in logs
out = Console(soft_wrap=True)  # stdout too: a long result line is one line in a log or a pipe


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: MESSAGE` on stderr and leave with `code` (2: a mistake the user can fix)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def shown(text: str) -> str:
    """Text from outside (file names, warnings) made safe to print: control characters escaped, so a newline or an
    ANSI escape in a name cannot forge or colour a line, and rich markup escaped, so `[/x]` in a path cannot crash
    the print and `[red]` cannot silently vanish from it."""
    from rich.markup import escape

    from ragtune.corpus.loaders import printable

    return escape(printable(text))


def pydantic_message(exc: Exception) -> str:
    """A validation error's first problem as one line (`ragtune.config.validation_message`; imported when an error
    happens, so a command's start does not pay for pydantic)."""
    from ragtune.config import validation_message

    return validation_message(exc)


def settings_from_options(settings: type[SettingsT], /, **values: Any) -> SettingsT:
    """A stage's settings model built from a command's options; a bad value is one line naming the option, and exit
    code 2 (before any model loads). Positional-only, so a field may be called `model` (`SystemSpec.model`)."""
    from pydantic import ValidationError

    try:
        return settings.model_validate(values)
    except ValidationError as exc:
        fail(pydantic_message(exc))


class InterruptLatch:
    """Ctrl-C that cannot be lost. The interrupt is raised at once as usual, and also remembered: native code that
    checks for signals and clears the error (seen on a busy machine: an ingest ran to the end through a Ctrl-C) would
    otherwise swallow it, so `check()` raises it again at the next commit boundary."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    def __enter__(self) -> InterruptLatch:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
