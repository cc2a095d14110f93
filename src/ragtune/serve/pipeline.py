"""One RAG answer, step by step: tenant-scoped retrieval, injection screening, the RAFT prompt, the semantic cache,
batched generation, and the durable record that feedback refers to.

Retrieval runs in a worker thread under one lock (the Searcher's catalog and BM25 index are shared state); generation
goes through the request's model route (`ragtune.serve.models`): a `ragtune.llm.server.Batcher`, or the llama.cpp
engine's continuous batching (`ragtune.llm.llamacpp_slots`), so concurrent requests share forward passes. The tenant
filter is added here from the authenticated principal and compared on the typed tenant column
(`ragtune.serve.scope`): request filters are ANDed with it and can only narrow the result; one naming the tenant is
refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ragtune.config import SearchConfig
from ragtune.index.store import filter_mask
from ragtune.llm.base import LLM, GenerationConfig, Message
from ragtune.llm.llamacpp_slots import DEFAULT_SLOTS
from ragtune.prompts import PromptStyle, build_messages, system_prompt_for
from ragtune.records import Hit
from ragtune.retrieve.search import Searcher
from ragtune.retrieve.semantic_cache import SemanticCache
from ragtune.serve.feedback import FeedbackStore, new_id
from ragtune.serve.guardrails import InjectionPolicy, Limits, find_injection, strip_control_tokens
from ragtune.serve.models import ModelRouter, build_router
from ragtune.serve.schemas import APIError, ChatRequest, Citation, Flagged
from ragtune.serve.scope import TENANT, ScopeError, SourceNames, check_request_filters
from ragtune.workspace import Workspace

MIN_TEMPERATURE = 1e-3  # below it a request decodes greedily (found by tests/test_serve_fuzz.py: 5e-324 gave NaN)


class ServeConfig(BaseModel):
    """Server settings (the `serve:` section of `--config`); search settings are a `SearchConfig` beside it."""

    model_config = ConfigDict(extra="forbid")

    prompt: PromptStyle = "short"  # "cot": the RAFT student layout (use it with a RAFT-tuned adapter)
    default_max_tokens: int = 256
    cache: bool = True
    cache_threshold: float = 0.95
    cache_entries: int = 1024  # per tenant
    injection_policy: InjectionPolicy = "drop"
    redact_pii: bool = False
    log_requests: bool = True
    limits: Limits = Field(default_factory=Limits)
    max_batch: int = 16
    batch_wait_ms: float = 20.0
    # llama.cpp engine: sequences decoded together (0: one request at a time). The slot engine's default: on 2 CPU
    # cores, 8 clients finished 14 / 15 / 10 requests in 40 CPU-s with 2 / 4 / 8 slots
    slots: int = Field(default=DEFAULT_SLOTS, ge=0, le=256)
    slot_ctx: int = Field(default=2048, ge=256, le=131072)  # llama.cpp engine: tokens of prompt + answer per slot
    index_check_seconds: float = 1.0  # how often the server looks for a newer index version (another process ingested)
    snippet_chars: int = 240


@dataclass
class Prepared:
    """A validated chat request: what to retrieve for, how to decode, and the cache signature."""

    question: str
    history: list[Message]
    system: str
    k: int
    mode: str
    filters: dict[str, str]
    generation: GenerationConfig
    cacheable: bool
    signature: str
    model: str = ""  # the served model (route) that answers
    cache_key: tuple[str, Any] | None = None  # (tenant fingerprint, query vector) once looked up


@dataclass
class Answer:
    id: str
    created: int
    model: str
    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    citations: list[Citation] = field(default_factory=list)
    flagged: list[Flagged] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    contexts: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=lambda: {"hit": False})
    timings: dict[str, float] = field(default_factory=dict)

    def extension(self) -> dict[str, Any]:
        """The `ragtune` object of a response: what was flagged, whether the cache answered, timings."""
        return {"flagged": [f.model_dump() for f in self.flagged], "cache": self.cache,
                "timings_ms": {k: round(v * 1000, 1) for k, v in self.timings.items()}}


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _encode_cached(value: dict[str, Any]) -> str:
    """A cached answer as JSON for the cache file (citations and flags are pydantic models; the rest is plain)."""
    return json.dumps({**value, "citations": [c.model_dump() for c in value["citations"]],
                       "flagged": [f.model_dump() for f in value["flagged"]]})


def _decode_cached(data: str) -> dict[str, Any]:
    value = json.loads(data)
    return {**value, "citations": [Citation(**c) for c in value["citations"]],
            "flagged": [Flagged(**f) for f in value["flagged"]]}


class RagPipeline:
    def __init__(self, workspace: Workspace | str | os.PathLike[str], llm: LLM, search: SearchConfig | None = None,
                 config: ServeConfig | None = None, model_name: str | None = None, router: ModelRouter | None = None):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.llm = llm
        self.search_config = search or SearchConfig()
        self.config = config or ServeConfig()
        self.model_name: str = model_name or str(getattr(llm, "name", None) or "ragtune")
        self._stage_llms: dict[str, LLM] = {}
        self.searcher = Searcher(self.workspace, self.search_config, llm_for=self.retrieval_llm)
        # the served models by request name; without a router, `llm` alone (llama.cpp: continuous batching)
        self.router = router or build_router(llm, self.model_name, {}, self.config.max_batch, self.config.batch_wait_ms,
                                             self.config.slots, self.config.slot_ctx)
        self.batcher = self.router.default.scheduler  # the default model's scheduler (warm, counters)
        self.feedback = FeedbackStore(self.workspace)
        # beside feedback.sqlite3, so a restart keeps the cache warm; the namespace keeps apart entries made under other
        # search settings or another embedder (a request's signature carries only the per-request settings)
        self.cache = SemanticCache(
            self.config.cache_threshold, self.config.cache_entries,
            path=self.feedback.path.parent / "semantic_cache.sqlite3" if self.config.cache else None,
            namespace=_hash({"search": self.search_config.model_dump(), "embedder": self.searcher.settings.embedder}),
            encode=_encode_cached, decode=_decode_cached)
        self.sources = SourceNames(self.workspace)
        self._lock = threading.Lock()
        self._checked = 0.0
        self._fingerprints: dict[str, tuple[int, str]] = {}

    # -- LLM search stages -----------------------------------------------------------------------------------------
    def retrieval_llm(self, ref: str | None) -> LLM:
        """The LLM of a search stage (query transform, LLM route, `llm:` reranker) for its model reference.

        Unnamed (None, "", "default") or naming the served model: the generator this server already holds, so the
        weights are not loaded twice (its own lock keeps one forward pass at a time next to the batcher). Another
        model is loaded once and kept. Called under the search lock, so no second lock is needed here.
        """
        ref = (ref or "").strip()
        if ref in ("", "default") or self._is_served(ref):
            return self.llm
        if ref not in self._stage_llms:
            from ragtune.retrieve.llm_rerank import load_retrieval_llm

            self._stage_llms[ref] = load_retrieval_llm(ref)
        return self._stage_llms[ref]

    def _is_served(self, ref: str) -> bool:
        """Whether `ref` names the served weights: its name, or a reference resolving to the same local folder (an
        adapter makes it another model: the base reference then loads the base)."""
        path, adapter = getattr(self.llm, "path", None), getattr(self.llm, "adapter", None)
        if adapter:
            return False
        if ref == self.llm.name:
            return True
        if path is None or ref.startswith("openai:"):
            return False
        from pathlib import Path

        from ragtune.models import resolve_generator

        try:
            return Path(resolve_generator(ref, convert=False).path).resolve() == Path(path).resolve()
        except Exception:  # noqa: BLE001 - not resolvable here: load_llm will say why when it is loaded
            return False

    # -- index -----------------------------------------------------------------------------------------------------
    def warm(self) -> dict[str, int]:
        """Load the catalog, BM25 and the embedder now, not on the first request; count chunks without a tenant."""
        with self._lock:
            self._sync_index(force=True)
            self.searcher.embedder.encode_query("warm up")
            tenants = self.searcher.catalog["tenant"].to_pylist()
        untagged = sum(1 for t in tenants if not t)  # the tenant column: no filter a key makes can reach these
        return {"chunks": len(tenants), "untagged": untagged}

    def _sync_index(self, force: bool = False) -> None:
        """Pick up a newer table version written by another process (`ragtune ingest`), at most once a second."""
        now = time.monotonic()
        if not force and now - self._checked < self.config.index_check_seconds:
            return
        self._checked = now
        self.searcher.store.checkout_latest(force=True)
        self.searcher.refresh()

    def search(self, tenant: str, query: str, k: int, mode: str | None, filters: dict[str, str]) -> list[Hit]:
        """The tenant's hits, sources shown relative to their ingest root. `tenant` (from the key) becomes the scope
        on the typed tenant column; a request filter naming the tenant raises ScopeError (a 400)."""
        check_request_filters(filters)
        with self._lock:
            self._sync_index()
            scoped = {**filters, TENANT: tenant}  # the key's tenant, on the column (index.store.filter_sql)
            if "source" in filters:  # a client knows sources in their shown form
                catalog = self.searcher.catalog  # one table for both reads, whatever another process commits
                mine = filter_mask(catalog, {TENANT: tenant})
                sources = [s for s, ok in zip(catalog["source"].to_pylist(), mine, strict=True) if ok]
                scoped["source"] = self.sources.stored(filters["source"], sources)
            hits = self.searcher.search(query, k=k, mode=mode, filters=scoped)
            return [h.model_copy(update={"source": self.sources.show(h.source)}) for h in hits]

    def fingerprint(self, tenant: str) -> str:
        """A hash of the tenant's chunks (ids and document hashes); recomputed only when the table version moves."""
        with self._lock:
            self._sync_index()
            version = self.searcher.store.version
            known = self._fingerprints.get(tenant)
            if known and known[0] == version:
                return known[1]
            table = self.searcher.store.scan(["chunk_id", "doc_hash"], {"tenant": tenant})
            pairs = sorted(zip(table["chunk_id"].to_pylist(), table["doc_hash"].to_pylist(), strict=True))
            # "scope 2": answers cached before the typed tenant scope and relative sources are never reused
            fp = _hash({"scope": 2, "chunks": pairs})
            self._fingerprints[tenant] = (version, fp)
            return fp

    def embed_query(self, text: str):
        with self._lock:
            return self.searcher.embedder.encode_query(text)

    # -- one request -----------------------------------------------------------------------------------------------
    def prepare(self, request: ChatRequest) -> Prepared:
        """Check the request against `Limits` (each refusal a 400 naming the field) and derive what to retrieve and
        how to decode. Cheap by construction: every count and length is bounded before anything scales with it."""
        limits = self.config.limits
        if len(request.messages) > limits.max_messages:
            raise APIError(400, f"too many messages ({len(request.messages)} > {limits.max_messages})",
                           param="messages", code="context_length_exceeded")
        for i, m in enumerate(request.messages):
            if isinstance(m.content, list) and len(m.content) > limits.max_content_parts:
                raise APIError(400, f"messages.{i}.content has {len(m.content)} parts, more than this server's "
                               f"limit of {limits.max_content_parts}", param=f"messages.{i}.content")
        if request.n not in (None, 1):
            raise APIError(400, "n > 1 is not supported: send one request per completion", param="n")
        if request.logit_bias is not None and len(request.logit_bias) > limits.max_logit_bias:
            raise APIError(400, f"logit_bias has more than {limits.max_logit_bias} entries", param="logit_bias")
        raw_stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(raw_stop) > limits.max_stop:
            raise APIError(400, f"stop has {len(raw_stop)} sequences, more than this server's limit of "
                           f"{limits.max_stop}", param="stop")
        if any(len(x) > limits.max_stop_chars for x in raw_stop):
            raise APIError(400, f"a stop sequence is longer than {limits.max_stop_chars} characters", param="stop")
        stop = [x for x in dict.fromkeys(raw_stop) if x]  # an empty stop would cut every answer to nothing
        texts = [(m.role, m.text()) for m in request.messages]
        if sum(len(t) for _, t in texts) > limits.max_prompt_chars:
            raise APIError(400, f"messages hold more than {limits.max_prompt_chars} characters", param="messages",
                           code="context_length_exceeded")
        if texts[-1][0] != "user" or not texts[-1][1].strip():
            raise APIError(400, "the last message must be a non-empty user message (the question)", param="messages")
        question = texts[-1][1].strip()
        if len(question) > limits.max_query_chars:
            raise APIError(400, f"the question is longer than {limits.max_query_chars} characters", param="messages",
                           code="context_length_exceeded")
        system_extra = "\n\n".join(t for r, t in texts[:-1] if r in ("system", "developer") and t.strip())
        history = [{"role": r, "content": t} for r, t in texts[:-1] if r in ("user", "assistant")]
        max_tokens = request.max_completion_tokens or request.max_tokens or self.config.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} is above this server's limit of {limits.max_tokens}",
                           param="max_tokens")
        opts = request.ragtune
        k = self.search_config.k if opts.k is None else opts.k
        if k > limits.max_k:
            raise APIError(400, f"ragtune.k {k} is above this server's limit of {limits.max_k}", param="ragtune.k")
        if len(opts.filters) > limits.max_filters:
            raise APIError(400, f"more than {limits.max_filters} filters", param="ragtune.filters")
        try:
            check_request_filters(opts.filters)
        except ScopeError as exc:
            raise APIError(400, str(exc), param="ragtune.filters") from exc
        # a temperature near zero divides the logits into inf / NaN (torch.multinomial then raises): it means greedy
        temperature = request.temperature if (request.temperature or 0.0) >= MIN_TEMPERATURE else 0.0
        generation = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature or 0.0,
                                      top_p=request.top_p or 1.0, stop=stop, seed=request.seed)
        mode = opts.mode or self.search_config.mode
        model = self.router.route(request.model).name  # 404 for a model this server does not serve
        signature = _hash({"model": model, "prompt": self.config.prompt, "k": k, "mode": mode,
                           "filters": opts.filters, "max_tokens": max_tokens, "stop": stop, "system": system_extra,
                           "history": history})
        cacheable = self.config.cache and opts.cache and generation.temperature == 0.0
        return Prepared(question, history, system_extra, k, mode, dict(opts.filters), generation, cacheable,
                        signature, model=model)

    def screen(self, hits: list[Hit]) -> tuple[list[Hit], list[Flagged]]:
        """Strip control tokens from every chunk; flag instruction-like chunks and, under 'drop', leave them out."""
        kept, flagged = [], []
        for hit in hits:
            clean = hit.model_copy(update={"text": strip_control_tokens(hit.text)})
            finding = find_injection(hit.text)
            if finding is None:
                kept.append(clean)
                continue
            drop = self.config.injection_policy == "drop"
            flagged.append(Flagged(chunk_id=hit.chunk_id, source=hit.source, rule=finding.rule,
                                   excerpt=finding.excerpt[:200], action="dropped" if drop else "kept"))
            if not drop:
                kept.append(clean)
        return kept, flagged

    def messages_for(self, prepared: Prepared, hits: list[Hit]) -> list[Message]:
        """The prompt the student was trained on (`ragtune.prompts`, the hits shown as title + text), with the client's
        system text appended to its system turn and earlier conversation turns placed before the question."""
        system = system_prompt_for(self.config.prompt, bool(hits))
        if prepared.system:
            system = f"{system}\n\n{prepared.system}"
        messages = build_messages(prepared.question, hits, self.config.prompt, system_prompt=system)
        return [*messages[:-1], *prepared.history, messages[-1]]

    def citation(self, index: int, hit: Hit) -> Citation:
        return Citation(index=index, chunk_id=hit.chunk_id, doc_id=hit.doc_id, source=hit.source, title=hit.title,
                        score=hit.score, snippet=hit.text[: self.config.snippet_chars])

    async def retrieve(self, tenant: str, request: ChatRequest) -> tuple[Prepared, Answer]:
        """Everything before generation. A cache hit comes back with its text filled in (nothing left to do)."""
        prepared = self.prepare(request)
        answer = Answer(id=new_id("chatcmpl"), created=int(time.time()), model=prepared.model or self.model_name)
        t0 = time.perf_counter()
        if prepared.cacheable:
            vector = await asyncio.to_thread(self.embed_query, prepared.question)
            fingerprint = await asyncio.to_thread(self.fingerprint, tenant)
            hit = self.cache.lookup(tenant, fingerprint, prepared.signature, vector)
            prepared.cache_key = (fingerprint, vector)
            if hit is not None:
                for key in ("text", "finish_reason", "prompt_tokens", "completion_tokens", "citations", "flagged",
                            "messages", "contexts"):
                    setattr(answer, key, hit.value[key])
                answer.cache = {"hit": True, "similarity": round(hit.similarity, 4), "question": hit.question}
                answer.timings["retrieval"] = time.perf_counter() - t0
                return prepared, answer
        hits: list[Hit] = []
        if prepared.k > 0:
            try:
                hits = await asyncio.to_thread(self.search, tenant, prepared.question, prepared.k, prepared.mode,
                                               prepared.filters)
            except ValueError as exc:
                raise APIError(400, str(exc), param="ragtune") from exc
        # ~2 ms of regex work per chunk on normalised text: off the event loop, so other requests keep flowing
        kept, answer.flagged = await asyncio.to_thread(self.screen, hits)
        answer.citations = [self.citation(i, h) for i, h in enumerate(kept, start=1)]
        answer.contexts = [{"chunk_id": h.chunk_id, "doc_id": h.doc_id, "source": h.source, "title": h.title,
                            "text": h.text, "score": h.score} for h in kept]
        answer.messages = self.messages_for(prepared, kept)
        answer.timings["retrieval"] = time.perf_counter() - t0
        return prepared, answer

    async def generate(self, tenant: str, prepared: Prepared, answer: Answer,
                       on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> Answer:
        """Generate (unless the cache answered), store the response durably, fill the cache. `on_text` gets the
        answer's pieces as the model produces them (on the batcher's thread; nothing is called for a cache hit).
        Setting `cancel` (the client went away) stops generation; this then raises CancelledError and stores
        nothing: a cut answer is neither cached nor offered for feedback."""
        if not answer.cache.get("hit"):
            t0 = time.perf_counter()
            route = self.router.route(prepared.model)
            gen = await asyncio.wrap_future(route.submit(answer.messages, prepared.generation, on_text, cancel))
            answer.timings["generation"] = time.perf_counter() - t0
            answer.text, answer.finish_reason = gen.text, gen.finish_reason
            answer.prompt_tokens, answer.completion_tokens = gen.prompt_tokens, gen.completion_tokens
            if prepared.cache_key is not None:
                fingerprint, vector = prepared.cache_key
                self.cache.store(tenant, fingerprint, prepared.signature, vector, prepared.question, {
                    "text": answer.text, "finish_reason": answer.finish_reason,
                    "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                    "citations": answer.citations, "flagged": answer.flagged, "messages": answer.messages,
                    "contexts": answer.contexts,
                })
        await asyncio.to_thread(
            self.feedback.record_response, answer.id, tenant, answer.model, prepared.question, answer.messages,
            answer.contexts, answer.text,
            {"k": prepared.k, "mode": prepared.mode, "filters": prepared.filters, "prompt": self.config.prompt,
             "max_tokens": prepared.generation.max_new_tokens, "cache_hit": bool(answer.cache.get("hit"))},
        )
        return answer

    async def answer(self, tenant: str, request: ChatRequest) -> Answer:
        prepared, answer = await self.retrieve(tenant, request)
        return await self.generate(tenant, prepared, answer)
