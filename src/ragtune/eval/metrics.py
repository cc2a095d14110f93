"""Moved to `ragtune.metrics` (the foundation, which training and evaluation both score with): this re-export keeps
`ragtune.eval.runner`'s `from ragtune.eval import metrics` working until it imports `ragtune.metrics` itself."""

from ragtune.metrics import (
    aggregate,
    degeneracy_rates,
    exact_match,
    extract_answer,
    f1_interval,
    f1_score,
    has_answer_tag,
    hit_token_limit,
    is_abstention,
    is_looping,
    mrr,
    ndcg_at_k,
    quote_stats,
    recall_at_k,
)

__all__ = [
    "aggregate",
    "degeneracy_rates",
    "exact_match",
    "extract_answer",
    "f1_interval",
    "f1_score",
    "has_answer_tag",
    "hit_token_limit",
    "is_abstention",
    "is_looping",
    "mrr",
    "ndcg_at_k",
    "quote_stats",
    "recall_at_k",
]
