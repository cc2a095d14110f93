"""A cross-encoder reranking stage: re-score the first stage's candidates by reading query and chunk together.

A bi-encoder compares two vectors computed apart; a cross-encoder attends across query and chunk, which ranks better
and costs one forward pass per candidate, so it only sees the first stage's top candidates. The model is any
sentence-transformers CrossEncoder folder (what `ragtune train reranker` writes) or hub id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ragtune.index.settings import index_text
from ragtune.records import Hit

_LOADED: dict[str, object] = {}


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
