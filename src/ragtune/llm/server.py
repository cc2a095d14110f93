"""A minimal OpenAI-compatible server over any `LLM`: `/v1/models`, `/v1/chat/completions`, and
`/v1/ragtune/loglikelihood` (a ragtune extension: the chat API cannot score a given continuation).

Concurrent requests are gathered into batches (a request waits at most `batch_wait_ms` for company), so a local model
serves many concurrent clients the way vLLM's continuous batching does, in miniature. It exists so ragtune's
OpenAI client is tested against a real HTTP server with a real model, and so a user can put a local (LoRA-tuned)
model behind the same client code as a hosted one. The full RAG server is `ragtune.serve`.

    python -m ragtune.llm.server --model smollm2-135m-instruct --port 8000
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any, Protocol

from ragtune.llm.base import LLM, GenerationConfig, Message

log = logging.getLogger("ragtune.llm")


class GenerationTimeout(TimeoutError):
    """A job ran past its deadline (`Batcher.timeout_s`): it was skipped in the queue or stopped at the next token."""


class _Settleable(Protocol):
    """What `GivesUpJobs` reads of a queued job (the batcher's and the slot engine's job records both have it)."""

    future: Future
    cancel: threading.Event | None
    deadline: float | None
    queued: float


class GivesUpJobs:
    """Settles the jobs a worker must not run on, and counts them: one rule for the batcher and the slot engine, so a
    cancelled or expired request fails the same way (CancelledError / GenerationTimeout) whichever engine serves it."""

    cancelled = 0  # jobs given up by their caller (their future raises CancelledError)
    timed_out = 0  # jobs past their deadline (their future raises GenerationTimeout)

    def _given_up(self, job: _Settleable) -> bool:
        """Settle a job that must not run on (cancelled, past its deadline); True when it is settled."""
        if job.future.done():
            return True
        if job.cancel is not None and job.cancel.is_set():
            self.cancelled += 1
            job.future.set_exception(CancelledError("the caller gave up this request"))
            return True
        if job.deadline is not None and time.monotonic() > job.deadline:
            self.timed_out += 1
            job.future.set_exception(GenerationTimeout(f"no answer within {job.deadline - job.queued:.0f} s"))
            return True
        return False


@dataclass
class _Job:
    messages: list[Message]
    config: GenerationConfig
    future: Future
    on_text: Callable[[str], None] | None = None  # pieces of this job's answer as they are generated
    cancel: threading.Event | None = None  # set when the caller went away (a closed stream): stop generating for it
    deadline: float | None = None  # time.monotonic() past which the job is given up (GenerationTimeout)
    queued: float = 0.0  # time.monotonic() of submit

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def warm_stop_strings(llm: LLM, stop: list[str]) -> None:
    """Build a local model's stop-string matcher now, on the caller's thread, so the batching thread finds it cached.

    transformers' `StopStringCriteria` scans the whole vocabulary once per stop list (0.4 s for 4 stops of 64
    characters with SmolLM2's 49k tokens on a CPU core, minutes for thousands of stops) and keeps the last 8 lists in
    a cache keyed by the stop strings. Built inside `generate`, that scan would run on the one thread every request
    shares; built here first, `generate` finds it in the cache (about 0.05 s). Other backends need nothing.
    """
    tokenizer = getattr(llm, "tokenizer", None)
    if not stop or tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return
    try:
        from transformers.generation.stopping_criteria import StopStringCriteria
    except ImportError:  # no transformers: the backend is not a local model
        return
    StopStringCriteria(tokenizer, list(stop))


def stall_health(busy_since: float | None, last_progress: float, queued: int, stall_after_s: float,
                 busy_what: str) -> dict[str, Any]:
    """The health record of a generation worker (the request batcher, llama.cpp's slot engine): `degraded`, with a
    reason, when one step (`busy_what`, e.g. "a batch has been generating") has run longer than `stall_after_s`
    since `busy_since`, or requests have waited that long without the worker taking any; `ok` otherwise."""
    now = time.monotonic()
    reason = None
    if busy_since is not None and now - busy_since > stall_after_s:
        reason = f"{busy_what} for {now - busy_since:.0f} s"
    elif queued and now - last_progress > stall_after_s:
        reason = f"{queued} requests queued and none taken for {now - last_progress:.0f} s"
    return {"status": "degraded" if reason else "ok", "reason": reason, "queued": queued,
            "busy_s": None if busy_since is None else round(now - busy_since, 1)}


class Batcher(GivesUpJobs):
    """One worker thread that drains a queue of chat jobs into `llm.generate` calls of up to `max_batch`."""

    def __init__(self, llm: LLM, max_batch: int = 16, batch_wait_ms: float = 20.0, timeout_s: float | None = None):
        self.llm = llm
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000.0
        self.timeout_s = timeout_s  # default deadline of a job, from submit (queueing included); None: no deadline
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.lock = threading.Lock()  # generate and loglikelihood never run at once on one model
        self.batches = 0
        self.cancelled = 0  # jobs given up by their caller (their future raises CancelledError)
        self.timed_out = 0  # jobs past their deadline (their future raises GenerationTimeout)
        self.busy_since: float | None = None  # time.monotonic() when the running generate call began
        self.last_progress = time.monotonic()  # when the worker last took jobs from the queue or finished a call
        self.thread = threading.Thread(target=self._run, name="ragtune-batcher", daemon=True)
        self.thread.start()

    def submit(self, messages: list[Message], config: GenerationConfig,
               on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
               timeout_s: float | None = None) -> Future:
        """Queue one conversation; the future gets its `Generation`. With `on_text`, the answer's text pieces are
        also reported while the batch runs (on the worker thread: hand them to a queue, do no work there). Setting
        `cancel` gives the job up: it is skipped if still queued, or stops at the next token (a backend with
        `supports_cancel`; others finish the batch), and its future raises CancelledError instead of a cut answer.
        A job still unanswered `timeout_s` (default `self.timeout_s`) after submit is given up the same way and its
        future raises GenerationTimeout, so one slow request cannot hold the shared model for longer than that."""
        future: Future = Future()
        now, timeout = time.monotonic(), self.timeout_s if timeout_s is None else timeout_s
        self.jobs.put(_Job(messages, config, future, on_text, cancel, now + timeout if timeout else None, now))
        return future

    def warm(self, config: GenerationConfig) -> None:
        """Per-request preparation that would otherwise run on the shared worker thread (the stop-string matcher);
        call it on the request's own thread before `submit`."""
        warm_stop_strings(self.llm, config.stop)

    def health(self, stall_after_s: float) -> dict[str, Any]:
        """`ok`, or `degraded` with a reason when one generate call has run longer than `stall_after_s` or jobs have
        waited that long without the worker taking any (a wedged model, a prefill that never ends)."""
        return stall_health(self.busy_since, self.last_progress, self.jobs.qsize(), stall_after_s, "a batch has been "
                            "generating")

    @staticmethod
    def _fan_out(jobs: list[_Job]) -> Callable[[int, str], None]:
        def on_text(i: int, piece: str) -> None:
            listener = jobs[i].on_text
            if listener is not None:
                try:
                    listener(piece)
                except Exception:  # noqa: BLE001 - a gone client must not fail the rest of its batch
                    log.exception("stream listener failed")

        return on_text

    def _run(self) -> None:
        while True:
            first = self.jobs.get()
            batch = [first]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    batch.append(self.jobs.get(timeout=max(0.0, left)) if left > 0 else self.jobs.get_nowait())
                except queue.Empty:
                    break
            self.last_progress = time.monotonic()
            # one generate call per distinct decoding config (a batch shares max_new_tokens, temperature, stop)
            groups: dict[tuple, list[_Job]] = {}
            for job in batch:
                c = job.config
                groups.setdefault((c.max_new_tokens, c.temperature, c.top_p, tuple(c.stop), c.seed), []).append(job)
            for group in groups.values():
                jobs = [j for j in group if not self._given_up(j)]
                if not jobs:
                    continue
                try:
                    conversations = [j.messages for j in jobs]
                    extra: dict[str, Any] = {}
                    if getattr(self.llm, "supports_cancel", False) and any(j.cancel or j.deadline for j in jobs):
                        extra["cancelled"] = lambda i, jobs=jobs: bool(
                            (jobs[i].cancel and jobs[i].cancel.is_set()) or jobs[i].expired())
                    with self.lock:
                        self.busy_since = time.monotonic()
                        try:
                            if any(j.on_text for j in jobs):  # streaming only observes: every row's output is same
                                outs = self.llm.generate_stream(conversations, self._fan_out(jobs), jobs[0].config,
                                                                batch_size=len(jobs), **extra)
                            else:
                                outs = self.llm.generate(conversations, jobs[0].config, batch_size=len(jobs), **extra)
                        finally:
                            self.busy_since, self.last_progress = None, time.monotonic()
                    self.batches += 1
                    for job, out in zip(jobs, outs, strict=True):
                        # a row cut by its deadline comes back "cancelled"; a row that finished is kept even when
                        # the deadline passed meanwhile
                        if out.finish_reason == "cancelled" or (job.cancel is not None and job.cancel.is_set()):
                            self._given_up(job)
                        if not job.future.done():
                            job.future.set_result(out)
                except Exception as exc:  # noqa: BLE001 - every waiting client must get an answer
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)


def create_app(
    llm: LLM,
    model_name: str | None = None,
    api_key: str | None = None,
    max_batch: int = 16,
    batch_wait_ms: float = 20.0,
):
    """A FastAPI app serving `llm` under `model_name` (any model name is accepted, as llama.cpp's server does)."""
    import asyncio

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    name = model_name or getattr(llm, "name", "ragtune")
    batcher = Batcher(llm, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    app = FastAPI(title="ragtune LLM server")
    app.state.batcher = batcher

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.headers.get("authorization", "") != f"Bearer {api_key}":
            return JSONResponse(
                {"error": {"message": "invalid API key", "type": "invalid_request_error"}}, status_code=401
            )
        return await call_next(request)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "ragtune"}]}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "batches": batcher.batches}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: dict[str, Any]) -> dict[str, Any] | StreamingResponse:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPException(400, "messages must be a non-empty list")
        stop = body.get("stop") or []
        config = GenerationConfig(
            max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
            temperature=float(body.get("temperature") or 0.0),
            top_p=float(body.get("top_p") or 1.0),
            stop=[stop] if isinstance(stop, str) else list(stop),
            seed=body.get("seed"),
        )
        ident, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), str(body.get("model") or name)
        if body.get("stream"):
            return StreamingResponse(_sse(batcher, messages, config, ident, created, model,
                                          bool((body.get("stream_options") or {}).get("include_usage"))),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        gen = await asyncio.wrap_future(batcher.submit(messages, config))
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": gen.text}, "finish_reason": gen.finish_reason}
            ],
            "usage": {
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "total_tokens": gen.prompt_tokens + gen.completion_tokens,
            },
        }

    @app.post("/v1/ragtune/loglikelihood")
    def loglikelihood(body: dict[str, Any]) -> dict[str, Any]:
        requests = [(r["messages"], r["continuation"]) for r in body.get("requests", [])]
        with batcher.lock:
            scores = llm.loglikelihood(requests)
        return {"model": name, "loglikelihoods": scores}

    return app


async def _sse(batcher: Batcher, messages: list[Message], config: GenerationConfig, ident: str, created: int,
               model: str, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chat.completion.chunk events: the role, one chunk per piece of text as the model decodes it, the
    finish reason, optionally the usage, then [DONE]. A client that hangs up cancels its row of the batch."""
    import asyncio

    def event(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
        chunk: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                                 "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    loop, pieces = asyncio.get_running_loop(), asyncio.Queue[str | None]()
    cancel = threading.Event()
    def on_text(piece: str) -> None:
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    future = asyncio.wrap_future(batcher.submit(messages, config, on_text, cancel))
    future.add_done_callback(lambda _: pieces.put_nowait(None))  # after every piece already queued
    yield event({"role": "assistant", "content": ""})
    try:
        while (piece := await pieces.get()) is not None:
            yield event({"content": piece})
    finally:
        if not future.done():  # the client went away: stop generating for it
            cancel.set()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        gen = future.result()
    except Exception as exc:  # noqa: BLE001 - the status line is gone: report in-band, as OpenAI does
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
        yield "data: [DONE]\n\n"
        return
    yield event({}, gen.finish_reason)
    if include_usage:
        yield event({}, usage={"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                               "total_tokens": gen.prompt_tokens + gen.completion_tokens})
    yield "data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a local model over an OpenAI-compatible HTTP API.")
    parser.add_argument("--model", default=None, help="model reference (bundled name, folder, .gguf, hub id)")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder")
    parser.add_argument("--name", default=None, help="model id reported by /v1/models")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    args = parser.parse_args(argv)

    import uvicorn

    from ragtune.llm import load_llm

    llm = load_llm(args.model, adapter=args.adapter)
    app = create_app(
        llm,
        args.name or args.model or "smollm2-135m-instruct",
        api_key=args.api_key,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
