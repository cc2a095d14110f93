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
