"""Trained retrievers as search sees them: a folder with `retriever.json` beside the model(s) it names.

Training lives in `ragtune.train`; this module only reads what training saved, so search never imports a later
stage. Two kinds exist:
- `query-tower` (LSR, RA-DIT R-ft): only the query encoder was trained. Documents stay embedded by the index's own
  embedder (the frozen document tower), so the index is used as it is; the spec names that document tower and a
  search refuses an index embedded by anything else (the query vectors would live in another space).
- `dual-encoder` (contrastive): one model embeds both queries and documents; the index must have been re-embedded
  with it (training does that), which the index settings record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

SPEC_FILE = "retriever.json"


class RetrieverError(ValueError):
    """A retriever folder that cannot be used with this index; the message says what to do."""


class RetrieverSpec(BaseModel):
    """What a trained retriever folder holds. Paths are relative to the folder."""

    kind: Literal["query-tower", "dual-encoder"]
    method: str
    query_encoder: str
    document_encoder: str  # the embedder reference of the document tower (IndexSettings.embedder when compatible)
    base: str = ""
    metrics: dict[str, dict[str, float]] = {}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / SPEC_FILE
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path


def load_spec(folder: str | Path) -> RetrieverSpec:
    folder = Path(folder)
    path = folder / SPEC_FILE
    if not folder.is_dir():
        raise RetrieverError(f"retriever {folder} is not a folder (expected the output of `ragtune train retriever`)")
    if not path.exists():
        raise RetrieverError(f"{folder} has no {SPEC_FILE}: it is not the output of `ragtune train retriever`")
    try:
        return RetrieverSpec.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise RetrieverError(f"{path} is not a valid retriever spec: {exc}") from exc


def query_encoder_path(folder: str | Path, index_embedder: str) -> str:
    """The query model folder of a trained retriever, after checking it fits the index's document vectors."""
    folder = Path(folder)
    spec = load_spec(folder)
    encoder = (folder / spec.query_encoder).resolve()
    if not encoder.is_dir():
        raise RetrieverError(f"{folder}: the query encoder folder {encoder} is missing")
    if spec.kind == "query-tower" and spec.document_encoder != index_embedder:
        raise RetrieverError(
            f"{folder} is a query tower trained against documents embedded by {spec.document_encoder!r}, but this "
            f"index was embedded by {index_embedder!r}; train it on this workspace instead"
        )
    if spec.kind == "dual-encoder" and str(encoder) != index_embedder:
        raise RetrieverError(
            f"{folder} embeds documents too, but this index was embedded by {index_embedder!r}: re-embed the index "
            f"with it (`ragtune train retriever --method contrastive` does, unless --no-reembed) or use the "
            f"workspace it was trained on"
        )
    return str(encoder)
