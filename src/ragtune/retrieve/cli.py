"""The retrieve stage's command-line options, shared by every command that searches (`ragtune search`, `ragtune eval
--setting retrieved`) and defined once so their names, defaults and help never drift apart. Each maps to a
`SearchConfig` field through `search_overrides`."""

from __future__ import annotations

import typer

from ragtune.retrieve.options import search_overrides as search_overrides  # what the commands call with the values

RetrieverOption = typer.Option(None, "--retriever", help="A trained retriever folder (`ragtune train retriever`): "
                               "its query encoder embeds the query for the dense leg.")
RerankOption = typer.Option(None, "--rerank", help="Rerank the top --rerank-candidates hits: a cross-encoder (PATH or "
                            "cross-encoder:PATH, a `ragtune train reranker` folder or hub id) or an LLM judging "
                            "relevance by P(yes) (llm:MODEL; llm: alone is the bundled model).")
RerankCandidatesOption = typer.Option(20, "--rerank-candidates", help="With --rerank: first-stage hits it reads.")
TransformOption = typer.Option("none", "--transform", help="Query transform: none | rewrite | hyde (embed a "
                               "hypothetical answer) | subqueries (decompose, retrieve each, fuse) | multi "
                               "(paraphrases fused by RRF), each through an LLM and cached per (model, query) | hop "
                               "(no LLM: search again with the top hit's text added, fuse; multi-hop questions) | "
                               "link (no LLM: add the documents whose title the top hits mention) | hop+link.")
TransformModelOption = typer.Option(None, "--transform-model", help="LLM for --transform (default: the bundled one).")
WindowOption = typer.Option(0, "--window", help="Small-to-big: match sentences, return each with N sentences either "
                            "side (needs `ingest --sentences`).")
ParentOption = typer.Option(False, "--parent", help="Small-to-big: match sentences, return each one's parent (chunk "
                            "or document, see --parent-level), each parent once (needs `ingest --sentences`).")
ParentLevelOption = typer.Option("chunk", "--parent-level", help="With --parent: chunk | document.")
RouteOption = typer.Option("off", "--route", help="off | auto (rules: summarise / overview / compare questions go to "
                           "the document-summary level, fact questions to chunks) | llm (an LLM decides). Needs "
                           "`ingest --summaries`.")
