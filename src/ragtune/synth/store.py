"""Append-only group files: the resume mechanism of every synthesis builder.

One JSONL line per finished unit of work (a chunk, a labelled record): `{"group_id", "examples", "counts"}`, written
with a single write + flush + fsync. A `kill -9` can leave at most one torn last line; reopening drops it, and the
builder skips every group id already present. Because each group's randomness comes from (seed, group id) alone,
the resumed file equals the file of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.synth.records import Group, PairExample, PreferenceExample, RaftExample


class GroupFile:
    """Open (creating if needed) a group file for appending; `done` holds the group ids already written."""

    def __init__(self, path: str | Path, overwrite: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and self.path.exists():
            self.path.unlink()
        self.done: set[str] = set()
        self.counts: dict[str, int] = {}
        self.examples = 0
        self.dropped_torn_line = False
        self._repair_and_scan()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the builder's lifetime

    def _repair_and_scan(self) -> None:
        if not self.path.exists():
            return
        good_end = 0
        with open(self.path, "rb") as f:
            offset = 0
            for raw in f:
                offset += len(raw)
                if not raw.endswith(b"\n"):
                    break  # a torn last line: everything from good_end on is dropped
                try:
                    group = json.loads(raw)
                except json.JSONDecodeError:
                    break
                good_end = offset
                self._note(group)
        if good_end < self.path.stat().st_size:
            self.dropped_torn_line = True
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())

    def _note(self, group: dict[str, Any]) -> None:
        self.done.add(group["group_id"])
        self.examples += len(group.get("examples", []))
        for key, value in group.get("counts", {}).items():
            self.counts[key] = self.counts.get(key, 0) + int(value)

    def append(self, group: Group) -> None:
        line = group.model_dump_json() + "\n"
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._note(json.loads(line))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> GroupFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_groups(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete group line of a file (a torn last line is ignored, as a resume would drop it)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                break


def iter_examples(path: str | Path) -> Iterator[dict[str, Any]]:
    for group in iter_groups(path):
        yield from group.get("examples", [])


def read_raft(path: str | Path, split: str = "all") -> list[RaftExample]:
    """The RAFT examples of a workspace file (`synth/raft.jsonl`), optionally one split only."""
    out = [RaftExample.model_validate(e) for e in iter_examples(path)]
    return [e for e in out if split == "all" or e.split in (split, None)]


def read_pairs(path: str | Path) -> list[PairExample]:
    return [PairExample.model_validate(e) for e in iter_examples(path)]


def read_preferences(path: str | Path) -> list[PreferenceExample]:
    return [PreferenceExample.model_validate(e) for e in iter_examples(path)]


def sum_counts(path: str | Path) -> dict[str, int]:
    totals: dict[str, int] = {}
    for group in iter_groups(path):
        for key, value in group.get("counts", {}).items():
            totals[key] = totals.get(key, 0) + int(value)
    return totals
