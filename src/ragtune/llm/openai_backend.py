"""Any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, OpenAI, ragtune's own) as an `LLM`.

Requests run concurrently on a thread pool over one pooled httpx client. Transient failures (429, 5xx, timeouts,
connection resets, a body that is not the JSON promised) are retried with exponential backoff and jitter, honouring
Retry-After; a rejected key (401/403) stops at once with a message that says what to set, because retrying cannot fix
it. Every response's token usage is added up, and priced when the model's price is known or given.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from ragtune.llm.base import LLM, Generation, GenerationConfig, Message, OnText

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524}

# USD per million (input, output) tokens; a user can override with --price-in/--price-out or env vars.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}


class LLMError(RuntimeError):
    """A request that failed for good (after retries, or for a reason retries cannot fix)."""


class AuthenticationError(LLMError):
    """The server rejected the API key."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _price(model: str) -> tuple[float, float]:
    env_in, env_out = os.environ.get("RAGTUNE_PRICE_IN"), os.environ.get("RAGTUNE_PRICE_OUT")
    if env_in is not None or env_out is not None:
        return float(env_in or 0), float(env_out or 0)
    for name in sorted(PRICES, key=len, reverse=True):  # longest prefix wins: gpt-4o-mini before gpt-4o
        if model.startswith(name):
            return PRICES[name]
    return (0.0, 0.0)


class OpenAILLM(LLM):
    """Chat completions over HTTP. `generate`'s batch_size is the number of requests in flight."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        concurrency: int | None = None,
        price_in: float | None = None,
        price_out: float | None = None,
        extra_body: dict[str, Any] | None = None,
    ):
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or ""
        if not self.api_key and self.base_url == DEFAULT_BASE_URL:
            raise AuthenticationError(
                "No API key for api.openai.com: set OPENAI_API_KEY or pass --api-key "
                "(for a local server, set --base-url / OPENAI_BASE_URL)."
            )
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        default_in, default_out = _price(model)
        self.price_in = default_in if price_in is None else price_in
        self.price_out = default_out if price_out is None else price_out
        self.extra_body = extra_body or {}
        headers = {"Authorization": f"Bearer {self.api_key or 'EMPTY'}"}
        limits = httpx.Limits(max_connections=max(64, concurrency or 0), max_keepalive_connections=64)
        self.client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)), limits=limits
        )
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    # ---- one request, with retries -------------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post_once(url, body)
            except _Retryable as exc:
                last = str(exc)
                if attempt == self.max_retries:
                    break
                self.usage.count(retries=1)
                with self._rng_lock:
                    jitter = self._rng.uniform(0.5, 1.0)
                delay = min(self.max_backoff, self.backoff * (2**attempt)) * jitter
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self.max_backoff))
                time.sleep(delay)
        self.usage.count(failures=1)
        raise LLMError(f"{url}: gave up after {self.max_retries + 1} attempts: {last}")

    def _post_once(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.client.post(url, json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timeout ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error ({type(exc).__name__}: {exc})") from exc
        status = response.status_code
        if status in (401, 403):
            raise AuthenticationError(
                f"{url} rejected the API key (HTTP {status}): set OPENAI_API_KEY or pass --api-key "
                f"with a key this server accepts. Server said: {_short(response.text)}"
            )
        if status in RETRY_STATUS:
            raise _Retryable(f"HTTP {status}: {_short(response.text)}", _retry_after(response))
        if status >= 400:
            raise LLMError(f"{url}: HTTP {status}: {_short(response.text)}")
        try:
            data = response.json()
        except (json.JSONDecodeError, ValueError) as exc:
            raise _Retryable(f"response is not JSON: {_short(response.text)}") from exc
        if not isinstance(data, dict):
            raise _Retryable(f"response is not a JSON object: {_short(response.text)}")
        return data

    # ---- the LLM interface ---------------------------------------------------------------------------------------
    def _one(self, messages: list[Message], config: GenerationConfig) -> Generation:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            **self.extra_body,
        }
        if config.stop:
            body["stop"] = config.stop[:4]  # OpenAI accepts at most four
        if config.seed is not None:
            body["seed"] = config.seed
        url = f"{self.base_url}/chat/completions"
        t0 = time.perf_counter()
        for attempt in range(3):  # a 200 without a usable choice is retried too, a few times
            data = self._post("/chat/completions", body)
            try:
                choice = data["choices"][0]
                text = choice["message"].get("content") or ""
                finish = choice.get("finish_reason") or "stop"
                break
            except (KeyError, IndexError, TypeError, AttributeError):
                if attempt == 2:
                    self.usage.count(failures=1)
                    raise LLMError(f"{url}: malformed response: {_short(json.dumps(data))}") from None
                self.usage.count(retries=1)
        usage = data.get("usage") or {}
        gen = Generation(
            text=text.strip(),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            seconds=time.perf_counter() - t0,
            finish_reason=finish,
            raw={"id": data.get("id"), "model": data.get("model")},
        )
        cost = (gen.prompt_tokens * self.price_in + gen.completion_tokens * self.price_out) / 1e6
        self.usage.add(gen, cost)
        return gen

    def generate(
        self, conversations: list[list[Message]], config: GenerationConfig | None = None, batch_size: int = 8
    ) -> list[Generation]:
        config = config or GenerationConfig()
        if not conversations:
            return []
        workers = max(1, min(len(conversations), self.concurrency or batch_size))
        if workers == 1:
            return [self._one(c, config) for c in conversations]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ragtune-openai") as pool:
            futures = [pool.submit(self._one, c, config) for c in conversations]
            return [f.result() for f in futures]  # first permanent failure is raised; the rest finish first

    def generate_stream(
        self, conversations: list[list[Message]], on_text: OnText, config: GenerationConfig | None = None,
        batch_size: int = 8,
    ) -> list[Generation]:
        """Each answer as one piece as soon as its own request returns (not when the slowest of the batch does).

        Token-level SSE from the upstream server is not used: it would bypass the retry / malformed-response handling
        of `_post`, and a retried half-streamed answer cannot be taken back from the client.
        """
        config = config or GenerationConfig()
        if not conversations:
            return []

        def one(i: int) -> Generation:
            gen = self._one(conversations[i], config)
            if gen.text:
                on_text(i, gen.text)
            return gen

        workers = max(1, min(len(conversations), self.concurrency or batch_size))
        if workers == 1:
            return [one(i) for i in range(len(conversations))]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ragtune-openai") as pool:
            return list(pool.map(one, range(len(conversations))))

    def loglikelihood(self, requests: list[tuple[list[Message], str]], batch_size: int = 8) -> list[float]:
        """Log-likelihoods through ragtune's server extension (`POST /ragtune/loglikelihood`).

        The OpenAI chat API has no way to score a given continuation; a ragtune server exposes one. Other servers
        get a clear error instead of a silently wrong number.
        """
        if not requests:
            return []
        body = {"model": self.model, "requests": [{"messages": m, "continuation": c} for m, c in requests]}
        try:
            data = self._post("/ragtune/loglikelihood", body)
        except LLMError as exc:
            if "HTTP 404" in str(exc) or "HTTP 405" in str(exc):
                raise NotImplementedError(
                    f"{self.base_url} cannot score continuations (no /ragtune/loglikelihood endpoint): use a local "
                    "model for log-likelihoods, or serve it with `python -m ragtune.llm.server`."
                ) from exc
            raise
        return [float(x) for x in data["loglikelihoods"]]

    def models(self) -> list[str]:
        response = self.client.get(f"{self.base_url}/models")
        response.raise_for_status()
        return [m.get("id", "") for m in response.json().get("data", [])]


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
