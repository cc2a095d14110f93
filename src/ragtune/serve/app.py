"""`create_app(...)`: the FastAPI app of `ragtune serve`.

- `POST /v1/chat/completions` (plain and `stream=true` server-sent events, one chunk per piece of text as the model
  generates it), `GET /v1/models`: OpenAI-compatible, so
  the official `openai` client works unchanged (`base_url="http://HOST:PORT/v1"`, `api_key=` a tenant key). Answers
  carry `citations` (the chunks the model was given) and a `ragtune` object (flagged chunks, cache, timings).
- `POST /v1/search`: the tenant's chunks for a query. `POST /v1/feedback`: thumbs / corrections, durable on 200.
- `GET /curate`: the curation page (`ragtune.serve.curation`). `GET /health`: readiness, no key needed.
Every `/v1` route needs `Authorization: Bearer KEY`; the key decides the tenant, and nothing in a request body can
change it. Errors are OpenAI's JSON shape with the status a client expects (400, 401, 404, 413, 500).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragtune.serve.pipeline import Answer, RagPipeline
from ragtune.serve.request_log import RequestLog
from ragtune.serve.schemas import APIError, ChatRequest, FeedbackRequest, SearchRequest
from ragtune.serve.tenants import Principal, TenantStore

log = logging.getLogger("ragtune.serve")


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413 before the app parses them (chunked uploads too)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(send)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        error = APIError(413, f"request body larger than {self.max_bytes} bytes", code="request_too_large")
        payload = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _key_from(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def completion_body(answer: Answer) -> dict[str, Any]:
    return {
        "id": answer.id, "object": "chat.completion", "created": answer.created, "model": answer.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                     "finish_reason": answer.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                  "total_tokens": answer.prompt_tokens + answer.completion_tokens},
        "citations": [c.model_dump() for c in answer.citations],
        "ragtune": answer.extension(),
    }


def _chunk(answer: Answer, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    body = {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created, "model": answer.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def create_app(pipeline: RagPipeline, tenants: TenantStore | None = None) -> FastAPI:
    """The app over a ready pipeline (model, searcher, cache, feedback store) and the workspace's tenants."""
    from ragtune.serve.curation import curation_router

    tenants = tenants or TenantStore(pipeline.workspace)
    config = pipeline.config
    request_log = RequestLog(pipeline.workspace.root / "serve" / "requests.jsonl" if config.log_requests else None,
                             redact=config.redact_pii)
    app = FastAPI(title="ragtune RAG server", version="1", docs_url="/docs", redoc_url=None)
    app.state.pipeline = pipeline
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse(APIError(400, f"{loc}: {first.get('msg')}" if loc else str(first.get("msg")),
                                     param=loc or None).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), type=kind).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body(),
                            status_code=500)

    @app.middleware("http")
    async def timing(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            request_log.write(method=request.method, path=request.url.path, status=response.status_code,
                              ms=round((time.perf_counter() - t0) * 1000, 1),
                              tenant=getattr(request.state, "tenant", None),
                              query=getattr(request.state, "query", None))
        return response

    def principal(request: Request) -> Principal:
        key = _key_from(request)
        if key is None:
            raise APIError(401, "missing API key: send `Authorization: Bearer KEY` (create a key with `ragtune "
                           "tenants add NAME --workspace WS`)", code="invalid_api_key")
        who = tenants.authenticate(key)
        if who is None:
            raise APIError(401, "invalid API key", code="invalid_api_key")
        request.state.tenant = who.tenant
        return who

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": pipeline.model_name, "batches": pipeline.batcher.batches,
                "cancelled": pipeline.batcher.cancelled,
                "cache": pipeline.cache.stats.to_dict()}

    @app.get("/v1/models")
    def models(who: Principal = Depends(principal)) -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": pipeline.model_name, "object": "model", "created": 0, "owned_by": "ragtune"}]}

    async def answer_unless_gone(request: Request, tenant: str, prepared: Any, answer: Any) -> dict[str, Any]:
        """Generate while watching the connection: a client that timed out or hung up stops its generation (as a
        closed stream does) instead of holding the model for the rest of its tokens."""
        async def hung_up() -> None:
            # the body is read, so the next ASGI message is the disconnect (Request.is_disconnected cannot see it
            # through the http middleware's task group: it only polls)
            while (await request.receive())["type"] != "http.disconnect":
                pass

        cancel = threading.Event()
        task = asyncio.create_task(pipeline.generate(tenant, prepared, answer, cancel=cancel))
        watcher = asyncio.create_task(hung_up())
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            watcher.cancel()
            return completion_body(task.result())
        cancel.set()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        raise APIError(499, "the client closed the request", code="client_closed_request")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request,
                   who: Principal = Depends(principal)) -> dict[str, Any] | StreamingResponse:
        request.state.query = body.messages[-1].text() if body.messages else None
        prepared, answer = await pipeline.retrieve(who.tenant, body)  # errors here are plain JSON errors
        if not body.stream:
            return await answer_unless_gone(request, who.tenant, prepared, answer)
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            # role, citations and flags go out before generation starts: a client can show sources at once
            yield _chunk(answer, {"role": "assistant", "content": ""},
                         citations=[c.model_dump() for c in answer.citations], ragtune=answer.extension())
            # the batcher's thread hands each piece to this loop; None marks the end of generation (or its failure)
            loop, pieces = asyncio.get_running_loop(), asyncio.Queue[str | None]()

            def on_text(piece: str) -> None:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

            cancel = threading.Event()
            task = asyncio.create_task(pipeline.generate(who.tenant, prepared, answer, on_text=on_text, cancel=cancel))
            task.add_done_callback(lambda _: pieces.put_nowait(None))  # runs after every piece already queued
            sent = ""
            try:
                while (piece := await pieces.get()) is not None:
                    sent += piece
                    yield _chunk(answer, {"content": piece})
            finally:
                if not task.done():  # the client closed the stream: stop generating for it, store nothing
                    cancel.set()
                    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
            try:
                done = task.result()
            except Exception as exc:  # noqa: BLE001 - the status line is gone; report in-band, as OpenAI does
                log.exception("generation failed mid-stream")
                yield f"data: {json.dumps(APIError(500, str(exc), type='server_error').body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            if done.text != sent:  # a cache hit streams nothing; the final cut may settle a held-back tail
                if done.text.startswith(sent):
                    yield _chunk(done, {"content": done.text[len(sent):]})
                else:
                    log.warning("streamed text diverged from the final answer of %s", done.id)
            yield _chunk(done, {}, finish=done.finish_reason, ragtune=done.extension())
            if include_usage:
                usage = {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                         "total_tokens": done.prompt_tokens + done.completion_tokens}
                last = {"id": done.id, "object": "chat.completion.chunk", "created": done.created,
                        "model": done.model, "choices": [], "usage": usage}
                yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/search")
    async def search(body: SearchRequest, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        request.state.query = body.query
        limits = config.limits
        if body.k > limits.max_k or len(body.filters) > limits.max_filters or len(body.query) > limits.max_query_chars:
            raise APIError(400, f"k must be at most {limits.max_k}, filters at most {limits.max_filters}, the query at "
                           f"most {limits.max_query_chars} characters")
        try:
            hits = await asyncio.to_thread(pipeline.search, who.tenant, body.query, body.k, body.mode, body.filters)
        except ValueError as exc:
            raise APIError(400, str(exc)) from exc
        kept, flagged = pipeline.screen(hits)
        return {"object": "list", "data": [{**h.public(), "rank": h.rank} for h in kept],
                "flagged": [f.model_dump() for f in flagged]}

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        if body.rating is None and not (body.correction and body.correction.strip()):
            raise APIError(400, "send a rating ('up' or 'down') and / or a correction", param="rating")
        if body.response_id:
            served = await asyncio.to_thread(pipeline.feedback.get_response, who.tenant, body.response_id)
            if served is None:  # another tenant's response reads exactly like a missing one
                raise APIError(404, f"no response {body.response_id!r} for this API key", param="response_id",
                               code="response_not_found")
            question, answer = served["question"], served["answer"]
        elif body.question and body.answer is not None:
            question, answer = body.question, body.answer
        else:
            raise APIError(400, "send response_id (the completion's id) or both question and answer",
                           param="response_id")
        rating = body.rating or "down"  # a correction without a rating says the answer was wrong
        row, created = await asyncio.to_thread(
            pipeline.feedback.add_feedback, who.tenant, question, answer, body.response_id, rating, body.correction,
            body.comment, body.relevant_chunk_ids, body.irrelevant_chunk_ids, request.headers.get("idempotency-key"),
        )
        return {"id": row["id"], "object": "feedback", "created": created, "response_id": row["response_id"],
                "rating": row["rating"]}

    app.include_router(curation_router(pipeline, principal))
    return app
