"""`create_app(...)`: the FastAPI app of `ragtune serve`.

- `POST /v1/chat/completions` (plain and `stream=true` server-sent events, one chunk per piece of text as the model
  generates it), `GET /v1/models`: OpenAI-compatible, so
  the official `openai` client works unchanged (`base_url="http://HOST:PORT/v1"`, `api_key=` a tenant key). Answers
  carry `citations` (the chunks the model was given) and a `ragtune` object (flagged chunks, cache, timings).
- `POST /v1/search`: the tenant's chunks for a query. `POST /v1/feedback`: thumbs / corrections, durable on 200.
- `GET /curate`: the curation page (`ragtune.serve.curation`). `GET /health`: readiness, no key needed; 503 with
  `"status": "degraded"` while the batcher is stalled. `GET /openapi.json`: the schema, for an admin key only; no
  `/docs` page (FastAPI's loads its script from a CDN).
Every `/v1` route needs `Authorization: Bearer KEY`; the key decides the tenant, and nothing in a request body can
change it. Errors are OpenAI's JSON shape with the status a client expects (400, 401, 403, 404, 413, 503, 500); an
error echoes at most ~100 characters of the request, and a 500 carries only an error id that the server log explains.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragtune.llm.server import GenerationTimeout
from ragtune.serve.pipeline import Answer, Prepared, RagPipeline
from ragtune.serve.request_log import RequestLog
from ragtune.serve.schemas import MAX_ID, APIError, ChatRequest, FeedbackRequest, SearchRequest, clip
from ragtune.serve.tenants import Principal, TenantStore

log = logging.getLogger("ragtune.serve")

_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_JSON_DEPTH = 32


def json_problem(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str | None] | None:
    """(message, field) when a request body must be refused before the app parses it, else None.

    Refused: bytes that are not UTF-8, numbers Python will not parse (over 4,300 digits), nesting deeper than
    `max_depth`, and a lone UTF-16 surrogate (`"\\ud800"`) in any string or key: JSON allows the escape, but SQLite,
    the tokenizer and the log cannot encode it, so it would fail deep inside a request as a 500. Malformed JSON is
    left to the app, which answers 400 for it.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return "the request body is not valid UTF-8", None
    except json.JSONDecodeError:
        return None
    except (ValueError, RecursionError):
        return "the request body holds a number too long or nesting too deep to parse", None
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > max_depth:
            return f"the request body nests deeper than {max_depth} levels", path or None
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return f"{path or 'body'}: a lone UTF-16 surrogate is not valid Unicode", path or None
        elif isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if _SURROGATE.search(key):
                    return f"{path or 'body'}: a key holds a lone UTF-16 surrogate", path or None
                stack.append((item, where, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}" if path else str(i), depth + 1) for i, item in enumerate(value))
    return None


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class ServerErrors:
    """ASGI middleware: an unhandled exception becomes a 500 with an error id and no internal text; the log has the
    traceback under the same id. It answers instead of re-raising (Starlette's own handler re-raises, and uvicorn
    then closes the keep-alive connection, so the client's next request on it was reset)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:  # noqa: BLE001 - the last line of defence: nothing internal reaches the client
            error_id = f"err-{uuid.uuid4().hex[:16]}"
            log.exception("unhandled error %s on %s %s", error_id, scope.get("method"), scope.get("path"))
            if not started:  # once the status line is out nothing can be said (a stream reports in-band)
                await _send_json(send, 500, server_error_body(error_id))


def server_error_body(error_id: str) -> dict[str, Any]:
    body = APIError(500, f"internal server error (id {error_id}; the server log has the details)",
                    type="server_error", code="internal_error").body()
    body["error"]["id"] = error_id
    return body


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413 before the app parses them (chunked uploads too), and
    JSON the app could not handle (`json_problem`) with 400."""

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

        problem = json_problem(bytes(body)) if body.strip() else None
        if problem is not None:
            return await _send_json(send, 400, APIError(400, problem[0], param=problem[1]).body())
        return await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        error = APIError(413, f"request body larger than {self.max_bytes} bytes", code="request_too_large")
        await _send_json(send, 413, error.body())


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
    # no /docs or /redoc (their page loads a script from a CDN) and no open schema: /openapi.json below needs an
    # admin key
    app = FastAPI(title="ragtune RAG server", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pipeline = pipeline
    limits = config.limits
    pipeline.router.set_timeout(limits.generation_timeout_s)
    backstop = limits.generation_timeout_s + limits.stall_margin_s  # the batcher missed its own deadline by this
    app.add_middleware(ServerErrors)  # innermost: the timing middleware still logs the 500
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 503:
            headers = {"Retry-After": "30"}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        # loc may hold a client's dict key and msg a pattern: both clipped, the input itself never echoed
        loc = ".".join(clip(x, 40) for x in first.get("loc", ()) if x != "body")
        msg = clip(first.get("msg", "invalid value"), 200)
        return JSONResponse(APIError(400, f"{loc}: {msg}" if loc else msg, param=loc or None).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, clip(exc.detail), type=kind).body(),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.middleware("http")
    async def timing(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            try:
                request_log.write(method=request.method, path=clip(request.url.path, 200),
                                  status=response.status_code, ms=round((time.perf_counter() - t0) * 1000, 1),
                                  tenant=getattr(request.state, "tenant", None),
                                  query=getattr(request.state, "query", None))
            except OSError:  # a full disk must not turn an answered request into an error
                log.exception("could not write the request log")
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
    async def health() -> JSONResponse:
        """200 `ok`, or 503 `degraded` (with a reason) while one batch has run past the deadline plus the margin or
        the queue has not moved that long. Async: it answers even when every worker thread is busy."""
        router = pipeline.router
        state = router.health(backstop)
        body = {"status": state["status"], "reason": state["reason"], "model": router.default.name,
                "models": router.names, "batches": router.counter("batches"),
                "cancelled": router.counter("cancelled"), "timed_out": router.counter("timed_out"),
                "queued": state["queued"], "busy_s": state["busy_s"], "cache": pipeline.cache.stats.to_dict()}
        return JSONResponse(body, status_code=200 if state["status"] == "ok" else 503)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(who: Principal = Depends(principal)) -> JSONResponse:
        if not who.admin:
            raise APIError(403, "the API schema needs an admin key (`ragtune tenants add NAME --admin`)",
                           type="permission_error", code="admin_required")
        return JSONResponse(app.openapi())

    @app.get("/v1/models")
    def models(who: Principal = Depends(principal)) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "ragtune"}
                                           for name in pipeline.router.names]}

    def timeout_error() -> APIError:
        return APIError(503, f"generation took longer than this server's limit of {limits.generation_timeout_s:g} s; "
                        "ask for fewer max_tokens or retry later", type="server_error", code="generation_timeout")

    async def answer_unless_gone(request: Request, tenant: str, prepared: Any, answer: Any) -> dict[str, Any]:
        """Generate while watching the connection: a client that timed out or hung up stops its generation (as a
        closed stream does) instead of holding the model for the rest of its tokens. Past the deadline (the
        batcher's, or this backstop if the batcher cannot keep it) the request gets a 503."""
        async def hung_up() -> None:
            # the body is read, so the next ASGI message is the disconnect (Request.is_disconnected cannot see it
            # through the http middleware's task group: it only polls)
            while (await request.receive())["type"] != "http.disconnect":
                pass

        cancel = threading.Event()
        task = asyncio.create_task(pipeline.generate(tenant, prepared, answer, cancel=cancel))
        watcher = asyncio.create_task(hung_up())
        await asyncio.wait({task, watcher}, timeout=backstop, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            watcher.cancel()
            try:
                return completion_body(task.result())
            except GenerationTimeout:
                raise timeout_error() from None
        gone = watcher.done()
        cancel.set()
        watcher.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        if not gone:
            raise timeout_error()
        raise APIError(499, "the client closed the request", code="client_closed_request")

    async def warm(prepared: Prepared, answer: Answer) -> None:
        """Per-request preparation the shared batching thread would otherwise do (the stop-string matcher)."""
        if not answer.cache.get("hit") and prepared.generation.stop:
            await asyncio.to_thread(pipeline.router.route(prepared.model).scheduler.warm, prepared.generation)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request,
                   who: Principal = Depends(principal)) -> dict[str, Any] | StreamingResponse:
        try:
            request.state.query = body.messages[-1].text()
        except APIError:
            request.state.query = None  # prepare says why
        prepared, answer = await pipeline.retrieve(who.tenant, body)  # errors here are plain JSON errors
        await warm(prepared, answer)
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
            sent, until = "", time.monotonic() + backstop
            try:
                while True:
                    try:
                        piece = await asyncio.wait_for(pieces.get(), timeout=max(0.0, until - time.monotonic()))
                    except TimeoutError:  # the batcher missed its own deadline: give up here
                        break
                    if piece is None:
                        break
                    sent += piece
                    yield _chunk(answer, {"content": piece})
            finally:
                if not task.done():  # the client closed the stream (or the backstop fired): stop, store nothing
                    cancel.set()
                    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
            try:
                if not task.done():
                    raise GenerationTimeout("backstop")
                done = task.result()
            except GenerationTimeout:
                yield f"data: {json.dumps(timeout_error().body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            except Exception:  # noqa: BLE001 - the status line is gone; report in-band, as OpenAI does
                error_id = f"err-{uuid.uuid4().hex[:16]}"
                log.exception("generation failed mid-stream (%s)", error_id)
                yield f"data: {json.dumps(server_error_body(error_id))}\n\n"
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
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and len(idempotency_key) > MAX_ID:
            raise APIError(400, f"the Idempotency-Key header is longer than {MAX_ID} characters",
                           param="Idempotency-Key")
        if body.response_id:
            served = await asyncio.to_thread(pipeline.feedback.get_response, who.tenant, body.response_id)
            if served is None:  # another tenant's response reads exactly like a missing one
                raise APIError(404, f"no response {clip(body.response_id)!r} for this API key", param="response_id",
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
            body.comment, body.relevant_chunk_ids, body.irrelevant_chunk_ids, idempotency_key,
        )
        return {"id": row["id"], "object": "feedback", "created": created, "response_id": row["response_id"],
                "rating": row["rating"]}

    app.include_router(curation_router(pipeline, principal))
    return app
