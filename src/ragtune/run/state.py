"""What `ragtune run` already did in a workspace: one small JSON file (0600), `WORKSPACE/run_state.json`.

For each stage it keeps the key the stage ran under (a hash of its settings, of its input files' contents and of
the outputs of the stages it reads), whether it finished, and a digest of its outputs. A stage whose key is the
recorded one, which finished, and whose outputs are still there with the recorded digest, is skipped. A stage that
started under the same key and never finished (Ctrl-C, kill -9) resumes: the stages keep their own progress
(ingest commits per document, synth appends per record, train checkpoints, eval keeps finished batches).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.hashing import file_hash

STATE_FILE = "run_state.json"


def settings_hash(settings: Any) -> str:
    """sha256 of the settings as canonical JSON (keys sorted; paths as strings)."""
    text = json.dumps(settings, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def files_under(path: Path) -> list[Path]:
    """A file, or every file under a folder (sorted), hidden files and folders left out as the loaders do."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    found: list[Path] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return found


def content_hashes(paths: list[Path]) -> dict[str, str]:
    """{absolute path: sha256} of every file in or under `paths` (a missing path hashes as "missing")."""
    hashes: dict[str, str] = {}
    for p in paths:
        files = files_under(p)
        if not files:
            hashes[str(p.resolve())] = "missing"
        for f in files:
            hashes[str(f.resolve())] = file_hash(f)
    return hashes


def tree_digest(path: Path) -> str:
    """A digest of what a stage wrote: file contents for a file, (relative path, size) of each file for a folder
    (an index folder holds large immutable fragments; their names and sizes change whenever its rows do)."""
    if path.is_file():
        return file_hash(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in files_under(path):
        h.update(f"{f.relative_to(path)}\x1f{f.stat().st_size}\x1e".encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()


@dataclass
class StageRecord:
    """One stage's entry in the state file."""

    key: str
    status: str = "started"  # started | done
    settings: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    present: list[str] = field(default_factory=list)
    digest: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    seconds: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageRecord:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class RunState:
    """The state file of one workspace; every change is written at once (atomically, 0600)."""

    def __init__(self, workspace: Path):
        self.path = Path(workspace) / STATE_FILE
        self.stages: dict[str, StageRecord] = {}
        if self.path.is_file():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self.stages = {k: StageRecord.from_dict(v) for k, v in (raw.get("stages") or {}).items()}
            except (ValueError, TypeError, AttributeError):
                self.stages = {}  # unreadable: every stage runs again (each resumes or redoes its own work)

    def get(self, stage: str) -> StageRecord | None:
        return self.stages.get(stage)

    def unchanged(self, stage: str, key: str) -> bool:
        """True when the stage finished under `key` and its outputs are still what it wrote."""
        record = self.stages.get(stage)
        if record is None or record.status != "done" or record.key != key:
            return False
        if not all(Path(p).exists() for p in record.present):
            return False
        return all(tree_digest(Path(p)) == digest for p, digest in record.outputs.items())

    def interrupted(self, stage: str, key: str) -> bool:
        """True when the stage started under `key` and did not finish: run it again as a resume."""
        record = self.stages.get(stage)
        return record is not None and record.status == "started" and record.key == key

    def start(self, stage: str, key: str, settings: str, inputs: dict[str, str], upstream: dict[str, str]) -> None:
        self.stages[stage] = StageRecord(key=key, settings=settings, inputs=inputs, upstream=upstream)
        self.save()

    def finish(self, stage: str, outputs: list[Path], present: list[Path] | None = None) -> StageRecord:
        """Mark the stage done. `outputs` must keep their digest for a later skip; `present` need only exist (an
        index that a later stage re-embeds is still this stage's output)."""
        record = self.stages[stage]
        record.status = "done"
        record.finished = time.time()
        record.seconds = round(record.finished - record.started, 3)
        record.outputs = {str(p.resolve()): tree_digest(p) for p in outputs}
        record.present = [str(p.resolve()) for p in present or []]
        record.digest = settings_hash([record.outputs, [tree_digest(Path(p)) for p in record.present]])
        self.save()
        return record

    def output_digest(self, stage: str) -> str:
        """What a later stage's key holds of this stage: the digest of its recorded outputs."""
        record = self.stages.get(stage)
        return record.digest if record is not None and record.status == "done" else "not run"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "stages": {k: v.__dict__ for k, v in self.stages.items()}}
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
