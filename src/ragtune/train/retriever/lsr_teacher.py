"""Is a teacher worth it? How often an LM (base, or base + a RAFT adapter) ranks the gold chunk first, vs MiniLM.

LSR can only teach the retriever what its LM knows: if the LM's favourite among the retrieved chunks is gold less
often than the retriever's own first hit, KL(p_R || p_LSR) pulls the retriever the wrong way. This measures that on
N training questions over the same dense top-k candidates, with the same prompt and score cache as `train_lsr`, so
the scores it computes are the ones a later LSR run reuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragtune.retrieve.search import Searcher
from ragtune.train.retriever.lsr import (
    ScoreCache,
    cache_path,
    dense_candidates,
    gold_first_counts,
    lm_identity,
    load_scorer,
    prepare,
    score_candidates,
)
from ragtune.workspace import Workspace


def lm_gold_first(
    workspace: Workspace | str | Path,
    data: str | Path,
    lm: str | None = None,
    adapter: str | None = None,
    n: int = 150,
    top_k: int = 10,
    split: str = "train",
    llm: Any = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """{"n", "lm_top_is_gold", "retriever_top_is_gold", "gold_in_candidates", "lm"} over the first `n` questions of
    `split` in `data` whose gold chunk is indexed. `llm` (already loaded) overrides `lm` / `adapter`."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    searcher = Searcher(ws)
    chunks, resolved, _ = prepare(ws, data, searcher, n, split=split)
    resolved, candidates = dense_candidates(searcher, resolved, top_k)
    llm = llm if llm is not None else load_scorer(lm, adapter)
    cache = ScoreCache(cache_path(ws, lm_identity(llm)))
    scores, _ = score_candidates(resolved, candidates, chunks, llm, cache, batch_size)
    return {"n": len(resolved), **gold_first_counts(chunks, resolved, candidates, scores), "lm": lm_identity(llm)}
