"""Reading JSON Lines files (plain or gzipped), once for every stage that takes a user's JSONL.

A bad line stops the read with its `file:line` location, raised as the caller's own error type (a data-set error in
evaluation, a config error in synthesis or training), so a user sees where their file is wrong, not a traceback.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class JsonlError(ValueError):
    """A line that is not JSON, or not an object where objects are required; the message names file and line."""


def open_text(path: str | Path) -> IO[str]:
    """A UTF-8 text stream of the file, decompressed when its name ends in `.gz`."""
    path = Path(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def read_jsonl(path: str | Path, objects: bool = True, error: type[Exception] = JsonlError,
               torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for each non-blank line, in file order.

    `objects=True` requires every record to be a JSON object. A line that breaks the format raises `error` with
    "PATH:LINE: ..." and stops the read there. `torn_tail=True`: a last line that is not JSON and has no newline (an
    interrupted writer's, e.g. a killed synth run) ends the read instead, as a resume would drop it too.
    """
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if torn_tail and not line.endswith("\n"):
                    break
                raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if objects and not isinstance(record, dict):
                raise error(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, record
