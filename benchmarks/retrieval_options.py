"""The advanced-retrieval section of benchmarks/retrieval.py: every `SearchConfig` option of `ragtune.retrieve`
next to plain hybrid, on HotpotQA questions over the evaluation split's paragraphs.

Cheap options (small-to-big, routing by rules, the LLM-free second hop) run on every question; LLM options (query
transforms, LLM reranking, LLM routing) on the first `llm_questions` by sorted id, with plain hybrid measured on the
same subset.
Latency: the median per query of the search itself; for LLM transforms the generation is timed separately, batched
(8 a batch, as `eval` or a warm-up job would run it) and without the disk cache, and added as seconds per query.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune.config import SearchConfig
from ragtune.index.embedding import Embedder
from ragtune.retrieve.llm_rerank import load_retrieval_llm
from ragtune.retrieve.search import Searcher
from ragtune.retrieve.transforms import QueryTransformer

CHEAP: dict[str, dict[str, Any]] = {
    "hybrid": {},
    "window=1": {"window": 1},
    "parent=chunk": {"parent": "chunk"},
    "parent=document": {"parent": "document"},
    "route=auto": {"route": "auto"},
    "hop": {"transform": "hop"},
    "hop + parent=document": {"transform": "hop", "parent": "document"},
    "hop + route=auto": {"transform": "hop", "route": "auto"},
    "link": {"transform": "link"},
    "hop+link": {"transform": "hop+link"},
}
# Title-link merges compared on train-split questions only (`select_link`); the eval rows use SearchConfig's default.
LINK_CANDIDATES: dict[str, dict[str, Any]] = {
    "hybrid": {},
    "hop": {"transform": "hop"},
    "link rrf": {"transform": "link", "link_merge": "rrf"},
    "link after": {"transform": "link", "link_merge": "after"},
    "hop+link rrf": {"transform": "hop+link", "link_merge": "rrf"},
    "hop+link after": {"transform": "hop+link", "link_merge": "after"},
}
TRANSFORMS = ("rewrite", "hyde", "subqueries", "multi")


def score(titles: list[str], gold: set[str]) -> dict[str, float]:
    distinct = list(dict.fromkeys(titles))
    return {"recall@5": len(gold & set(distinct[:5])) / len(gold), "all_gold@10": float(gold <= set(distinct[:10])),
            "mrr": next((1 / (i + 1) for i, t in enumerate(distinct) if t in gold), 0.0)}


def measure(search: Callable[[str], list], questions: list[dict]) -> dict[str, Any]:
    """Title-level recall@5, all-gold@10, MRR and the median search latency of one configuration.

    Ranks count distinct titles (documents): two windows of one document are one retrieved document."""
    totals = {"recall@5": 0.0, "all_gold@10": 0.0, "mrr": 0.0}
    latencies = []
    for q in questions:
        t0 = time.perf_counter()
        hits = search(q["question"])
        latencies.append(time.perf_counter() - t0)
        for key, value in score([h.title for h in hits], {t for t, _ in q["supporting_facts"]}).items():
            totals[key] += value
    n = len(questions)
    return {**{k: v / n for k, v in totals.items()}, "n": n, "search_p50_ms": 1000 * statistics.median(latencies)}


def select_link(corpora: dict[str, Path], questions: list[dict], embedder: Embedder) -> dict[str, Any]:
    """Every link merge on train-split questions (never the evaluation ones) over each corpus; the chosen merge is
    the one with the best mean all-gold@10 across the corpora, ties broken by mean MRR (the two merges add the same
    documents, so they often tie on all-gold@10 and differ in where they put them), so the eval rows are not tuned
    on the eval set."""
    out: dict[str, Any] = {"questions": len(questions)}
    for corpus, ws in corpora.items():
        out[corpus] = {}
        for name, options in LINK_CANDIDATES.items():
            s = Searcher(ws, SearchConfig(**options), embedder=embedder)
            s.search("warm-up", k=10)
            out[corpus][name] = measure(lambda q, s=s: s.search(q, k=10), questions)
            print(f"  train {corpus:12s} {name:16s} " + " ".join(
                f"{k}={v:.3f}" for k, v in out[corpus][name].items() if isinstance(v, float)), flush=True)
    merges = {m: tuple(statistics.mean(out[c][f"{t} {m}"][key] for c in corpora for t in ("link", "hop+link"))
                       for key in ("all_gold@10", "mrr")) for m in ("rrf", "after")}
    out["chosen_merge"] = max(merges, key=lambda m: merges[m])
    return out


def run(ws: Path, questions: list[dict], llm_questions: int, embedder: Embedder, llm_ref: str | None = None,
        rerank_candidates: int = 20, rerank_questions: int = 20) -> dict[str, Any]:
    """Every option's scores; the LLM reranker (one LLM pass per candidate, ~17 s a question here) on the first
    `rerank_questions` only, next to plain hybrid on the same questions."""
    def searcher(**options: Any) -> Searcher:
        return Searcher(ws, SearchConfig(**options), embedder=embedder)

    def show(name: str, row: dict[str, Any]) -> None:
        print(f"  {name:28s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)

    out: dict[str, Any] = {"all": {}, "llm_subset": {}}
    for name, options in CHEAP.items():
        s = searcher(**options)
        s.search("warm-up", k=10)  # loads the level and its BM25 index: a one-off, not per-query latency
        out["all"][name] = measure(lambda q, s=s: s.search(q, k=10), questions)
        if name == "route=auto":
            routed = [s.pipeline.decide_route(q["question"]).level for q in questions]
            out["all"][name]["routed_to_summaries"] = routed.count("summaries")
        show(name, out["all"][name])

    subset = questions[:llm_questions]
    llm = load_retrieval_llm(llm_ref)
    out["llm_model"] = llm.name
    for name in ("hybrid", "parent=document", "hop"):
        s = searcher(**CHEAP[name])
        out["llm_subset"][name] = measure(lambda q, s=s: s.search(q, k=10), subset)
        show(f"{name} (subset)", out["llm_subset"][name])
    generated: dict[str, dict[str, list[str]]] = {}
    for transform in TRANSFORMS:
        transformer = QueryTransformer(transform, llm, cache=None)
        t0 = time.perf_counter()
        generated[transform] = transformer.generate([q["question"] for q in subset])
        llm_s = (time.perf_counter() - t0) / len(subset)
        usable = sum(1 for v in generated[transform].values() if v) / len(subset)
        for base in ("hybrid", "parent=document"):
            s = searcher(transform=transform, **CHEAP[base])
            row = measure(lambda q, s=s, g=generated[transform]: s.pipeline.search(q, 10, "hybrid", None, g[q]),
                          subset)
            row.update(llm_s_per_query=llm_s, usable_generations=usable)
            name = f"{transform}" if base == "hybrid" else f"{transform} + parent=document"
            out["llm_subset"][name] = row
            show(name, row)
        out.setdefault("examples", {})[transform] = {q["question"]: generated[transform][q["question"]]
                                                     for q in subset[:3]}
    reranked = subset[:rerank_questions]
    plain = searcher()
    out["rerank_subset"] = {"hybrid": measure(lambda q: plain.search(q, k=10), reranked)}
    s = searcher(reranker=f"llm:{llm_ref or ''}", rerank_candidates=rerank_candidates)
    out["rerank_subset"][f"llm-rerank top{rerank_candidates}"] = measure(lambda q: s.search(q, k=10), reranked)
    for name, row in out["rerank_subset"].items():
        show(f"{name} (rerank subset)", row)
    s = searcher(route="llm")
    s.pipeline._route_llm = llm
    out["llm_subset"]["route=llm"] = measure(lambda q, s=s: s.search(q, k=10), subset)
    out["llm_subset"]["route=llm"]["routed_to_summaries"] = sum(
        s.pipeline.decide_route(q["question"]).level == "summaries" for q in subset)
    show("route=llm", out["llm_subset"]["route=llm"])
    return out


def latency_ms(row: dict[str, Any]) -> float:
    """The median search latency of a row (the whole-corpus rows come from retrieval.py's `quality`)."""
    return row.get("search_p50_ms", row.get("latency_p50_ms", 0.0))


def print_table(result: dict[str, Any]) -> None:
    for part, title in (("all", "every question"), ("llm_subset", "LLM subset"), ("rerank_subset", "rerank subset"),
                        ("full_corpus", "the whole corpus's index, every question")):
        rows = result.get(part)
        if not rows:
            continue
        base = rows["hybrid"]
        print(f"\nretrieval options, {title} (n={base['n']})")
        print("| option | R@5 | all-gold@10 | MRR | search p50 ms | added latency | all-gold@10 vs hybrid |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            added = latency_ms(r) - latency_ms(base) + 1000 * r.get("llm_s_per_query", 0.0)
            print(f"| {name} | {r['recall@5']:.3f} | {r['all_gold@10']:.3f} | {r['mrr']:.3f} | "
                  f"{latency_ms(r):.0f} | {added:+.0f} ms | {r['all_gold@10'] / base['all_gold@10']:.3f}x |")
