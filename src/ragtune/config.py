"""Settings of each stage as pydantic models, with defaults that run offline on a laptop.

The CLI builds these from its options; `ragtune run CONFIG.yaml` reads the same models from YAML. This module also
holds what every stage's settings share (`StrictSettings`, `setting_error`, `one_of`, `at_least`, `between`,
`validation_message`), so a bad value reads the same in every stage: one line that names the command-line option.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ragtune.models import default_embedder

Number = TypeVar("Number", int, float)

ChunkerName = Literal["tokens", "sentences", "paragraphs", "semantic"]
SearchMode = Literal["hybrid", "dense", "bm25"]
QueryTransform = Literal["none", "rewrite", "hyde", "subqueries", "multi", "hop", "link", "hop+link"]
LinkMerge = Literal["rrf", "after"]
ParentLevel = Literal["none", "chunk", "document"]
RouteMode = Literal["off", "auto", "llm"]
SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)


class StrictSettings(BaseModel):
    """Base of a stage's settings: an unknown field is an error (a typo must not silently run with the default)."""

    model_config = ConfigDict(extra="forbid")


def setting_error(message: str) -> PydanticCustomError:
    """A validation error whose text is exactly `message` (a plain ValueError would read "Value error, ..."). The
    message travels as context, so braces in a user's value cannot break the template."""
    return PydanticCustomError("setting", "{message}", {"message": message})


def one_of(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise setting_error(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return value


def at_least(value: Number | None, low: Number, option: str) -> Number | None:
    """`value` when it is None or >= `low`; else an error naming `option`."""
    if value is not None and value < low:
        raise setting_error(f"{option} must be >= {low}, got {value}")
    return value


def between(value: Number, low: Number, high: Number, option: str) -> Number:
    if not low <= value <= high:
        raise setting_error(f"{option} must be between {low} and {high}, got {value}")
    return value


def validation_message(exc: Exception) -> str:
    """A validation error's first problem as `field: message` (the message alone for a rule across fields),
    instead of pydantic's multi-line report."""
    errors: list[Any] = getattr(exc, "errors", lambda: [])()
    if errors:
        e = errors[0]
        loc = ".".join(str(x) for x in e.get("loc", ()))
        return f"{loc}: {e.get('msg')}" if loc else str(e.get("msg"))
    return str(exc)


class IngestConfig(BaseModel):
    """How documents become indexed chunks.

    Chunk size and overlap are counted in the embedder's own tokens. MiniLM reads at most 256 including its two
    special tokens; the default of 240 leaves room for the title line that is embedded with each chunk. (On 100
    HotpotQA questions, 240 instead of 200 split fewer paragraphs and raised dense recall@5 from 0.755 to 0.780.)
    """

    embedder: str = Field(default_factory=default_embedder)
    chunker: ChunkerName = "sentences"
    chunk_size: int = 240
    overlap: int = 0
    batch_size: int = 32
    commit_every: int = 1024
    # A document longer than this many characters is split (deterministically) into parts `doc_id#partNNNNN`, each
    # chunked, embedded and committed on its own: bounded memory, and a kill -9 inside it loses at most one part.
    part_chars: int = Field(default=1_000_000, ge=10_000)
    format: str = "auto"
    text_field: str | None = None
    id_field: str | None = None
    title_field: str | None = None
    metadata_fields: list[str] | None = None
    tenant: str | None = None
    version: str | None = None
    prune: bool = True
    device: str | None = None
    # Derived levels of the index (`ragtune.index.levels`): sentences for small-to-big retrieval, and one summary
    # per document ("extractive": its lead sentences, fast; or any `load_llm` reference, slow on a CPU).
    sentences: bool = False
    summaries: bool = False
    summary_model: str | None = None


class SearchConfig(BaseModel):
    """How a query is answered: which legs run, how many candidates each gives, how they are fused."""

    mode: SearchMode = "hybrid"
    k: int = 5
    candidates: int = 50
    rrf_k: int = 60
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    # "memory": exact search over the vectors held in RAM (as fast as bare FAISS); "lancedb": query the table.
    dense_backend: Literal["memory", "lancedb"] = "memory"
    memory_limit: int = 5_000_000
    # A trained retriever folder (`ragtune train retriever`): its query encoder embeds the queries.
    retriever: str | None = None
    # A reranking stage over the first stage's top `rerank_candidates` hits: a cross-encoder folder or hub id
    # (`PATH` or `cross-encoder:PATH`), or `llm:MODEL` (an LLM scoring log P("yes" | is this passage relevant?);
    # `llm:` alone is the bundled generator). See `ragtune.retrieve.llm_rerank`.
    reranker: str | None = None
    rerank_candidates: int = 20
    # Apply the gate a trained reranker folder carries (`train reranker --gate`): rerank only the queries whose
    # first-stage top-1 minus top-2 score is below its threshold, in the mode it was calibrated for, and only on the
    # plain first stage (a query transform or small-to-big changes the scores it was calibrated on).
    rerank_gate: bool = True
    # Advanced retrieval (`ragtune.retrieve`); each is off by default and measured in benchmarks/retrieval.py.
    # A query transform through an LLM, cached on disk per (model, transform, query); "hop" needs no LLM: a second
    # search with the query plus the top hit's text, fused with the first (multi-hop questions).
    transform: QueryTransform = "none"
    transform_model: str | None = None  # any `load_llm` reference; None: the bundled generator
    transform_queries: int = 3  # multi: paraphrases asked for; subqueries: most sub-questions kept
    keep_original: bool = True  # fuse the original query's ranking with the transformed ones (RRF)
    # "link" (no LLM either): the documents whose title the top `link_hits` hits mention (`ragtune.retrieve.links`),
    # at most `link_docs` per hit (the best by cosine to the query), merged by RRF with the first stage ("rrf") or
    # placed right after the hit that names them ("after"). "hop+link" adds them to the hop's fused ranking.
    link_hits: int = Field(default=2, ge=1)
    link_docs: int = Field(default=2, ge=1)
    link_merge: LinkMerge = "after"  # chosen on train-split HotpotQA questions (benchmarks/retrieval.py)
    # Small-to-big: search the sentence level, return each hit with `window` sentences either side, or its parent.
    window: int = Field(default=0, ge=0)
    parent: ParentLevel = "none"
    # Route summary / overview / compare questions to the document-summary level: rules ("auto") or an LLM ("llm").
    route: RouteMode = "off"
    route_model: str | None = None
