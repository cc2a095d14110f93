"""A cross-encoder reranking stage: re-score the first stage's candidates by reading query and chunk together.

A bi-encoder compares two vectors computed apart; a cross-encoder attends across query and chunk, which ranks better
and costs one forward pass per candidate, so it only sees the first stage's top candidates. The model is any
sentence-transformers CrossEncoder folder (what `ragtune train reranker` writes) or hub id.

A trained folder may also carry a calibrated gate (`ragtune train reranker --gate`, in its reranker.json): rerank
only when the first stage is uncertain, i.e. when its top-1 minus top-2 score is below a threshold. The gate is read
here, where the reranker is loaded, so every search that reranks (`ragtune search`, eval, serve) applies it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ragtune.index.settings import index_text
from ragtune.records import Hit

_LOADED: dict[str, object] = {}
SPEC_FILE = "reranker.json"  # what `ragtune train reranker` writes beside the weights


def top_margin(hits: Sequence[Hit]) -> float:
    """Top-1 minus top-2 first-stage score; infinite (certain) with fewer than two hits."""
    return hits[0].score - hits[1].score if len(hits) >= 2 else math.inf


@dataclass(frozen=True)
class Gate:
    """Rerank a query only when the first stage's `top_margin` is below `threshold` (None: always rerank). Margins
    are on the first stage's own scale, so a gate holds for the mode it was calibrated in only."""

    threshold: float | None
    mode: str

    def reranks(self, hits: Sequence[Hit], mode: str) -> bool:
        if mode != self.mode or self.threshold is None:
            return True
        return top_margin(hits) < self.threshold


def load_gate(ref: str) -> Gate | None:
    """The calibrated gate stored in a reranker folder's reranker.json, or None (a hub id, or no gate)."""
    path = Path(ref).expanduser() / SPEC_FILE
    if not path.is_file():
        return None
    try:
        gate = json.loads(path.read_text(encoding="utf-8")).get("gate")
    except (OSError, ValueError):
        return None
    if not isinstance(gate, dict) or "mode" not in gate:
        return None
    threshold = gate.get("threshold")
    return Gate(None if threshold is None else float(threshold), str(gate["mode"]))


def load_cross_encoder(ref: str, device: str | None = None):
    """A CrossEncoder for a folder or hub id, loaded once per process."""
    from sentence_transformers import CrossEncoder

    from ragtune.models import quiet_transformers

    quiet_transformers()
    path = Path(ref).expanduser()
    if not path.is_dir() and (ref.count("/") != 1 or ref.startswith((".", "/", "~"))):
        raise ValueError(f"reranker {ref!r} is neither a folder (from `ragtune train reranker`) nor a hub id")
    key = str(path.resolve()) if path.is_dir() else ref
    model = _LOADED.get(key)
    if model is None:
        model = CrossEncoder(key, device=device)
        _LOADED[key] = model
    return model


class Reranker:
    """Reorders hits by cross-encoder score; the hit's score becomes that score (a logit: higher is better)."""

    def __init__(self, ref: str, device: str | None = None, batch_size: int = 32, embed_title: bool = True):
        self.ref = ref
        self.model = load_cross_encoder(ref, device)
        self.batch_size = batch_size
        self.embed_title = embed_title
        self.gate = load_gate(ref)

    def scores(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        out = self.model.predict([(query, t) for t in texts], batch_size=self.batch_size, show_progress_bar=False)
        return [float(s) for s in out]

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        # The reranker reads what the index embedded (title line + chunk), as it was trained to.
        scores = self.scores(query, [index_text(h.title, h.text, self.embed_title) for h in hits])
        order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))[:k]
        return [hits[i].model_copy(update={"score": scores[i], "rank": r}) for r, i in enumerate(order, start=1)]
