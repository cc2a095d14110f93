"""Index-wide settings that every later search must agree with (which embedder made the vectors)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ragtune.prompts import with_title
from ragtune.workspace import Workspace, write_json_atomic


class IndexMismatchError(RuntimeError):
    """The workspace's index was built with a different embedder than the one asked for."""


@dataclass
class IndexSettings:
    embedder: str
    dim: int
    embed_title: bool = True

    def save(self, workspace: Workspace) -> None:
        write_json_atomic(workspace.index_settings_path, asdict(self))

    @classmethod
    def load(cls, workspace: Workspace) -> IndexSettings | None:
        path = workspace.index_settings_path
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: data[k] for k in ("embedder", "dim", "embed_title") if k in data})


def index_text(title: str, text: str, embed_title: bool = True) -> str:
    """What is embedded and BM25-indexed for a chunk: its document title on a first line, then the chunk.

    The title rule is the foundation's `ragtune.prompts.with_title`, so what is indexed is what a model is shown.
    """
    return with_title(title, text) if embed_title else text
