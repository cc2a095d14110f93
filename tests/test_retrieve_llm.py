"""The LLM stages of retrieval with the real bundled SmolLM2: transforms cached on disk (the LLM is not asked
twice), variants fused, the LLM reranker ordering by P(yes), and the reranker reference forms."""

from __future__ import annotations

import math

import pytest

from ragtune.config import IngestConfig, SearchConfig
from ragtune.index.ingest import ingest
from ragtune.llm.base import LLM
from ragtune.records import Hit
from ragtune.retrieve.llm_rerank import LLMReranker, make_reranker, relevance_messages, yes_probabilities
from ragtune.retrieve.pipeline import transform_cache_path
from ragtune.retrieve.search import Searcher
from ragtune.retrieve.transforms import QueryTransformer, parse_generation

DOCS = {
    "paris": "Paris is the capital and largest city of France, on the river Seine.",
    "bananas": "Bananas are yellow fruits that grow in bunches in the tropics.",
    "berlin": "Berlin is the capital of Germany and its largest city.",
    "tides": "Tides are caused by the gravity of the moon and the sun.",
}


@pytest.fixture(scope="module")
def llm():
    from ragtune.llm import load_llm

    return load_llm(None)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("llm_retrieve")
    for name, text in DOCS.items():
        (root / f"{name}.txt").write_text(text, encoding="utf-8")
    ingest([root], root / "ws", IngestConfig(), embedder=embedder)
    return root / "ws"


def test_parse_generation_cleans_numbering_preambles_and_the_query_itself():
    text = "Here are the questions:\n1. When was Arthur's Magazine founded?\n2) When was First for Women founded?\n" \
           "- When was Arthur's Magazine founded?\nok"
    assert parse_generation("subqueries", text, "q", 3) == ["When was Arthur's Magazine founded?",
                                                            "When was First for Women founded?"]
    assert parse_generation("rewrite", "The rewritten query is: capital city of France", "q", 1) == [
        "capital city of France"]
    assert parse_generation("multi", "capital of France?", "Capital of France?", 3) == []  # only the query back
    assert parse_generation("hyde", "Paris.", "q", 1) == []  # too short to be a passage


def test_transform_is_cached_per_model_and_query(ws, embedder, llm):
    config = SearchConfig(transform="hyde")
    first = Searcher(ws, config, embedder=embedder)
    hits = first.search("What is the capital of France?", k=2)
    transformer = first.pipeline.transformer
    assert transformer is not None and transformer.llm.usage.requests == 1
    variants = first.pipeline.last_trace["variants"]
    assert variants[0]["origin"] == "original" and len(variants) == 2 and variants[1]["origin"] == "hyde"
    assert variants[1]["dense"] != variants[0]["dense"]  # the passage is embedded, not the question
    assert transform_cache_path(first).exists()

    second = Searcher(ws, config, embedder=embedder)  # a new process would see the same: the cache is on disk
    again = second.search("What is the capital of France?", k=2)
    assert second.pipeline.transformer.llm.usage.requests == 0  # type: ignore[union-attr]
    assert second.pipeline.transformer.cache.hits == 1  # type: ignore[union-attr]
    assert [h.chunk_id for h in again] == [h.chunk_id for h in hits]
    other = QueryTransformer("rewrite", llm, second.pipeline.transformer.cache)  # type: ignore[union-attr]
    before = llm.usage.requests
    other.generate(["What is the capital of France?"])  # another transform is another key: generated
    assert llm.usage.requests == before + 1


def test_choice_logprobs_one_pass_equals_the_loglikelihood_path(llm):
    convs = [relevance_messages("What is the capital of France?", "paris", DOCS["paris"])]
    fast = llm.choice_logprobs(convs, ["yes", "no"])
    slow = LLM.choice_logprobs(llm, convs, ["yes", "no"])
    assert fast[0] == pytest.approx(slow[0], abs=1e-3)


def test_llm_reranker_orders_by_p_yes(llm):
    question = "What is the capital of France?"
    hits = [Hit(chunk_id=name, doc_id=name, source=name, score=0.0, text=text, title=name, rank=i)
            for i, (name, text) in enumerate(reversed(list(DOCS.items())), start=1)]
    reranked = LLMReranker(llm).rerank(question, hits, k=4)
    probs = yes_probabilities(llm, [relevance_messages(question, h.title, h.text) for h in hits])
    expected = sorted(zip(probs, [h.chunk_id for h in hits], strict=True), key=lambda p: -p[0])
    assert [h.chunk_id for h in reranked] == [cid for _, cid in expected]
    assert [h.score for h in reranked] == pytest.approx([p for p, _ in expected])
    assert all(0.0 < h.score < 1.0 for h in reranked) and not math.isclose(reranked[0].score, reranked[-1].score)
    # The order is the model's, not the first stage's. (Whether the 135M model judges relevance well is measured in
    # benchmarks/retrieval.py, not asserted: it mostly does not.)
    assert [h.chunk_id for h in reranked] != [h.chunk_id for h in hits]


def test_llm_reranker_as_a_search_stage(ws, embedder):
    searcher = Searcher(ws, SearchConfig(reranker="llm:", rerank_candidates=4), embedder=embedder)
    hits = searcher.search("capital of France", k=2)
    assert len(hits) == 2 and hits[0].score >= hits[1].score and 0 < hits[0].score < 1


def test_reranker_references(tmp_path):
    assert isinstance(make_reranker("llm:default"), LLMReranker)
    for ref in (str(tmp_path / "missing"), f"cross-encoder:{tmp_path / 'missing'}"):
        with pytest.raises(ValueError, match=f"reranker '{tmp_path / 'missing'}'"):
            make_reranker(ref)
