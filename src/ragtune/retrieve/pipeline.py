"""The order of the retrieval stages for one query: route, transform, first stage per variant, fuse, small-to-big,
rerank. `ragtune.retrieve.search.Searcher.search` runs this; with every option off it is exactly the plain first stage.

The last query's decisions (route and reason, the variants searched, the level) are kept in `last_trace`, which the
CLI prints with `--explain`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ragtune.index.fusion import reciprocal_rank_fusion
from ragtune.index.levels import SENTENCES, SUMMARIES, has_level, parent_chunk_id
from ragtune.index.search import IndexSearcher
from ragtune.llm import LLM
from ragtune.records import Hit
from ragtune.retrieve.cache import TransformCache
from ragtune.retrieve.links import TitleLinks
from ragtune.retrieve.llm_rerank import RerankStage, load_retrieval_llm, make_reranker
from ragtune.retrieve.routing import Route, route
from ragtune.retrieve.small_to_big import DocumentOrder, expand_windows, to_parents
from ragtune.retrieve.transforms import QueryTransformer, Variant

SENTENCES_PER_HIT = 4  # sentence hits fetched per result wanted: several sentences of one parent collapse to one


def transform_cache_path(searcher: IndexSearcher):
    return searcher.workspace.root / "cache" / "query_transforms.sqlite"


class RetrievalPipeline:
    """Everything `SearchConfig` adds around the first stage, loaded lazily (an option left off costs nothing)."""

    def __init__(self, searcher: IndexSearcher, llm_for: Callable[[str | None], LLM] | None = None):
        """`searcher`: the chunk level's first stage; `llm_for`: who supplies the LLM of a transform / route / rerank
        (default `load_retrieval_llm`)."""
        self.searcher = searcher
        self.config = searcher.config
        self.llm_for = llm_for or load_retrieval_llm
        self._levels: dict[str, IndexSearcher] = {}
        self._orders: dict[tuple[str, int], DocumentOrder] = {}
        self._links: tuple[int, TitleLinks] | None = None
        self._transformer: QueryTransformer | None = None
        self._reranker: RerankStage | None = None
        self._route_llm: Any = None
        self._has_summaries: bool | None = None
        self.last_trace: dict[str, Any] = {}
        if self.config.window or self.config.parent != "none":
            self.level(SENTENCES)  # fail at construction when the sentence level was never built

    # -- lazily built parts ----------------------------------------------------------------------------------------
    @property
    def transformer(self) -> QueryTransformer | None:
        if self.config.transform in ("none", "hop", "link", "hop+link"):
            return None
        if self._transformer is None:
            self._transformer = QueryTransformer(
                self.config.transform, self.llm_for(self.config.transform_model),
                TransformCache(transform_cache_path(self.searcher)), n=self.config.transform_queries,
                keep_original=self.config.keep_original)
        return self._transformer

    @property
    def reranker(self) -> RerankStage | None:
        if self.config.reranker and self._reranker is None:
            self._reranker = make_reranker(self.config.reranker, embed_title=self.searcher.settings.embed_title,
                                           llm_for=self.llm_for)
        return self._reranker

    def level(self, name: str) -> IndexSearcher:
        if name == "chunks":
            return self.searcher
        if name not in self._levels:
            if not has_level(self.searcher.workspace, name):
                flag = "--sentences" if name == SENTENCES else "--summaries"
                raise FileNotFoundError(
                    f"the workspace {self.searcher.workspace.root} has no {name} level: run `ragtune ingest PATH "
                    f"--workspace {self.searcher.workspace.root} {flag}` first")
            self._levels[name] = IndexSearcher(self.searcher.workspace, self.config, embedder=self.searcher.embedder,
                                               level=name)
        return self._levels[name]

    def order(self, name: str) -> DocumentOrder:
        searcher = self.level(name)
        key = (name, searcher.store.version)
        if key not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] != name}
            self._orders[key] = DocumentOrder(searcher.catalog)
        return self._orders[key]

    def title_links(self) -> TitleLinks:
        """The title index of the chunk level (titles are the same on every level), rebuilt when the table moves."""
        version = self.searcher.store.version
        if self._links is None or self._links[0] != version:
            self._links = (version, TitleLinks(self.searcher.catalog))
        return self._links[1]

    def linked(self, searcher: IndexSearcher, query: str, ranked: list[tuple[str, float]],
               filters: dict[str, str] | None) -> list[dict[str, Any]]:
        """For each of the top `link_hits` hits: the documents its text names by title (its parent chunk's text on
        the sentence level), each as its chunk of this level most similar to the query, inside the filters, best
        `link_docs` first. A linked document's other chunks are left to the first stage: one entry point each."""
        cfg = self.config
        links, order = self.title_links(), self.order(searcher.level_name)
        top = [self._linking_hit(searcher, cid, filters) for cid, _ in ranked[: cfg.link_hits]]
        ranked_docs = {hit.doc_id for hit in top}  # already at the top: not worth a link slot
        out, seen = [], set()
        for (cid, _), hit in zip(ranked, top, strict=False):
            found = links.links(hit.text, exclude=ranked_docs)
            rows = {link.doc_id: [order.ids[r] for r in order.rows_of.get(link.doc_id, [])] for link in found}
            scored = searcher.score_chunks(query, [c for ids in rows.values() for c in ids], filters)
            best: dict[str, tuple[str, float]] = {}
            doc_of = {c: doc for doc, ids in rows.items() for c in ids}
            for chunk, score in scored:  # best first: the first chunk seen of a document is its best
                best.setdefault(doc_of[chunk], (chunk, score))
            by_doc = {link.doc_id: link for link in found}
            kept = [doc for doc in best if doc not in seen][: cfg.link_docs]
            seen.update(kept)
            out.append({"hit": cid, "hit_title": hit.title, "linked": [
                {"doc_id": d, "title": by_doc[d].title, "mention": by_doc[d].mention, "chunk_id": best[d][0],
                 "score": round(best[d][1], 4)} for d in kept]})
        return out

    def _linking_hit(self, searcher: IndexSearcher, cid: str, filters: dict[str, str] | None) -> Hit:
        """The text whose title mentions are followed for a hit: its parent chunk's on the sentence level (when that
        chunk passes the filters, as it always should), else the hit's own."""
        if searcher.level_name == SENTENCES:
            parent = parent_chunk_id(cid)
            if self.searcher.passes(parent, filters):
                return self.searcher.hit(parent)
        return searcher.hit(cid)

    def link_hop(self, searcher: IndexSearcher, query: str, ranked: list[tuple[str, float]],
                 filters: dict[str, str] | None) -> tuple[list[tuple[str, float]], list[dict[str, Any]]]:
        """Merge the linked documents into `ranked` (the first stage, or the hop's fusion): by RRF of the ranking
        and the linked chunks ordered by similarity to the query ("rrf"), or each hit's linked chunks placed right
        after it ("after"). Documents only reachable through a title mention (the bridge of a multi-hop question)
        enter the ranking; linked ones already in it move up."""
        trace = self.linked(searcher, query, ranked, filters)
        chunks = [(entry["chunk_id"], entry["score"]) for hop in trace for entry in hop["linked"]]
        if not chunks:
            return ranked, trace
        if self.config.link_merge == "rrf":
            linked = [c for c, _ in sorted(chunks, key=lambda pair: -pair[1])]
            return reciprocal_rank_fusion([[c for c, _ in ranked], linked], k=self.config.rrf_k), trace
        after = {hop["hit"]: [entry["chunk_id"] for entry in hop["linked"]] for hop in trace}
        moved = {c for c, _ in chunks}
        scores = dict(ranked)
        merged: list[tuple[str, float]] = []
        for cid, score in ranked:
            if cid in moved and cid not in after:
                continue  # placed after the hit that names it
            merged.append((cid, score))
            merged.extend((c, scores.get(c, 0.0)) for c in after.get(cid, []) if c not in after)
        return list(dict.fromkeys(merged)), trace

    def decide_route(self, query: str) -> Route:
        if self.config.route == "llm" and self._route_llm is None:
            self._route_llm = self.llm_for(self.config.route_model)
        if not self._has_summaries:  # checked until it exists: a level built while serving is picked up
            self._has_summaries = has_level(self.searcher.workspace, SUMMARIES)
        return route(query, self.config.route, self._route_llm, summaries_available=self._has_summaries)

    def second_hop(self, searcher: IndexSearcher, query: str, depth: int, mode: str, filters: dict[str, str] | None
                   ) -> tuple[list[tuple[str, float]], str]:
        """Search again with the query plus the top hit's text (its parent chunk's, on the sentence level), and fuse
        the two rankings. A multi-hop question names its first document; the second one is usually named *in* the
        first (HotpotQA's bridge entity), so the top hit's words find what the question's words cannot.
        Pseudo-relevance feedback from one document only: feeding back the top two was measured to hurt."""
        first = searcher.first_stage(query, depth, mode, filters)
        if not first:
            return first, query
        top = first[0][0]
        parent = parent_chunk_id(top) if searcher.level_name == SENTENCES else None
        use_parent = parent is not None and self.searcher.passes(parent, filters)
        text = (self.searcher.hit(parent) if use_parent and parent else searcher.hit(top)).text
        hop = f"{query} {text}"
        second = searcher.first_stage(hop, depth, mode, filters)
        return reciprocal_rank_fusion([[c for c, _ in first], [c for c, _ in second]], k=self.config.rrf_k), hop

    # -- one query -------------------------------------------------------------------------------------------------
    def variants(self, query: str, generated: list[str] | None = None) -> list[Variant]:
        transformer = self.transformer
        return [Variant(query, query)] if transformer is None else transformer.variants(query, generated)

    def gate_reranks(self, hits: list[Hit], mode: str, plain: bool) -> bool:
        """Whether the reranker runs on these first-stage hits: always, unless its folder carries a calibrated gate
        (`ragtune.index.rerank.Gate`), `rerank_gate` is on and the first stage is the plain one it was calibrated on
        (no query transform, no small-to-big), and the gate finds the first stage certain enough."""
        gate = getattr(self.reranker, "gate", None)
        if gate is None or not self.config.rerank_gate or not plain:
            return True
        return gate.reranks(hits, mode)

    def search(self, query: str, k: int, mode: str, filters: dict[str, str] | None = None,
               generated: list[str] | None = None) -> list[Hit]:
        """The top-k hits. `generated` passes transform outputs computed ahead (batched) instead of asking the LLM."""
        cfg = self.config
        decided = self.decide_route(query) if cfg.route != "off" else None
        name = decided.level if decided else "chunks"
        small_to_big = name == "chunks" and (cfg.window > 0 or cfg.parent != "none")
        if small_to_big:
            name = SENTENCES
        searcher = self.level(name)
        first_k = max(k, cfg.rerank_candidates) if self.reranker is not None else k
        fetch = first_k * SENTENCES_PER_HIT if small_to_big else first_k
        variants = self.variants(query, generated)
        links = None
        if cfg.transform in ("hop", "hop+link"):
            ranked, hop = self.second_hop(searcher, query, max(fetch, cfg.candidates), mode, filters)
            variants = [Variant(query, query), Variant(hop, hop, "hop")]
            if cfg.transform == "hop+link":
                ranked, links = self.link_hop(searcher, query, ranked, filters)
            ranked = ranked[:fetch]
        elif cfg.transform == "link":
            ranked = searcher.first_stage(query, max(fetch, cfg.candidates), mode, filters)
            ranked, links = self.link_hop(searcher, query, ranked, filters)
            ranked = ranked[:fetch]
        elif len(variants) == 1:
            ranked = searcher.first_stage(variants[0].lexical, fetch, mode, filters, variants[0].dense)
        else:
            depth = max(fetch, cfg.candidates)
            rankings = [[cid for cid, _ in searcher.first_stage(v.lexical, depth, mode, filters, v.dense)]
                        for v in variants]
            ranked = reciprocal_rank_fusion(rankings, k=cfg.rrf_k)[:fetch]
        hits = [searcher.hit(cid, score, rank) for rank, (cid, score) in enumerate(ranked, start=1)]
        if small_to_big and cfg.parent != "none":
            hits = to_parents(hits, cfg.parent, self.searcher.hit, self.order("chunks"), first_k, filters)
        elif small_to_big:
            hits = expand_windows(hits, self.order(SENTENCES), cfg.window, first_k, filters)
        reranker, reranked = self.reranker, False
        if reranker is not None and self.gate_reranks(hits, mode, plain=cfg.transform == "none" and not small_to_big):
            hits, reranked = reranker.rerank(query, hits, k), True
        if decided is not None:
            hits = [h.model_copy(update={"metadata": {**h.metadata, "level": name, "route": decided.reason}})
                    for h in hits]
        self.last_trace = {"level": name, "route": decided.reason if decided else None,
                           "variants": [v.__dict__ for v in variants], "reranker": cfg.reranker,
                           "reranked": reranked}
        if links is not None:
            self.last_trace["links"] = links
        return hits[:k]
