"""The public search (`ragtune.retrieve.search.Searcher`): the stages it runs around the index's first stage.

- `transforms`: rewrite / HyDE / sub-questions / multi-query through any `ragtune.llm` model, cached on disk
  (`cache`) per (model, transform, query), fused by reciprocal rank;
- `small_to_big`: a sentence hit returned with N sentences of window, or as its parent chunk / document, deduplicated;
- `routing`: overview / summarise / compare questions to the summary level, fact questions to chunks, with a reason;
- `llm_rerank`: an LLM as reranker (P("yes") that a passage is relevant), next to the cross-encoder;
- `semantic_cache`: answers to near-duplicate questions (used by serve);
- `pipeline`: the order in which these run for one query, over the levels `ragtune.index.levels` builds.
Every option lives on `ragtune.config.SearchConfig`, so the CLI, the Python API, eval and serve share them.
"""
