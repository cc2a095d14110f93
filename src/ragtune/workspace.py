"""The workspace folder: where every stage's artifacts and manifests live.

Each stage writes plain files under one folder and a small manifest (inputs' hashes, config, versions, counts,
timings) so a user can see what produced what, and a later stage can tell whether its inputs changed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

DEFAULT_WORKSPACE = Path("ragtune-workspace")

_TRACKED_PACKAGES = ("ragtune", "torch", "transformers", "sentence-transformers", "lancedb", "bm25s", "pydantic")


def package_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour an artifact depends on."""
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a kill -9) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Manifest:
    """What one stage ran on, with what settings, and what it produced."""

    stage: str
    inputs: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "inputs": self.inputs,
            "config": self.config,
            "counts": self.counts,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "versions": self.versions,
            "extra": self.extra,
            "started": self.started,
            "finished": time.time(),
        }


class Workspace:
    """Paths of every artifact inside one workspace folder."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_WORKSPACE):
        self.root = Path(root)

    def ensure(self) -> Workspace:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def lancedb_dir(self) -> Path:
        return self.index_dir / "lancedb"

    @property
    def bm25_dir(self) -> Path:
        return self.index_dir / "bm25"

    @property
    def index_settings_path(self) -> Path:
        return self.index_dir / "settings.json"

    # Artifact paths: every stage's default input and output, named once here so a stage that reads another's output
    # (train reads synth/raft.jsonl, ragtune run checks train/NAME/adapter) cannot look in a different place.

    @property
    def synth_dir(self) -> Path:
        return self.root / "synth"

    def synth_path(self, kind: str) -> Path:
        """`synth/KIND.jsonl`: raft, pairs or preferences."""
        return self.synth_dir / f"{kind}.jsonl"

    @property
    def raft_path(self) -> Path:
        return self.synth_path("raft")

    @property
    def pairs_path(self) -> Path:
        return self.synth_path("pairs")

    @property
    def preferences_path(self) -> Path:
        return self.synth_path("preferences")

    @property
    def feedback_data_dir(self) -> Path:
        """Where `synth from-feedback` writes the training data it draws from served answers' feedback."""
        return self.synth_dir / "feedback"

    def train_dir(self, name: str | None = None) -> Path:
        """`train/`, or one training run's folder `train/NAME` (checkpoints, adapter or model, summary)."""
        return self.root / "train" / name if name else self.root / "train"

    @property
    def lsr_cache_dir(self) -> Path:
        """The LM scores of LSR retriever training, cached per scoring LM."""
        return self.train_dir("lsr-cache")

    def eval_dir(self, name: str | None = None) -> Path:
        """`eval/`, or one evaluation run's folder `eval/NAME` (scores, predictions, manifest)."""
        return self.root / "eval" / name if name else self.root / "eval"

    def compare_dir(self, name: str) -> Path:
        """One system's answers in a comparison: `eval/compare/NAME`."""
        return self.eval_dir("compare") / name

    @property
    def serve_dir(self) -> Path:
        return self.root / "serve"

    @property
    def run_dir(self) -> Path:
        """`ragtune run`'s own files (the systems list it hands to compare)."""
        return self.root / "run"

    def manifest_path(self, stage: str) -> Path:
        return self.root / "manifests" / f"{stage}.json"

    def write_manifest(self, manifest: Manifest) -> Path:
        path = self.manifest_path(manifest.stage)
        write_json_atomic(path, manifest.to_dict())
        return path

    def read_manifest(self, stage: str) -> dict[str, Any] | None:
        path = self.manifest_path(stage)
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))
