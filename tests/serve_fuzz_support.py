"""Property-based fuzzing of a running `ragtune serve` from its own OpenAPI schema (schemathesis + hypothesis).

`fuzz_server(base_url, api_key, schema_key=admin_key)` fetches `/openapi.json` (an admin key is needed for it), then
sends schemathesis-generated requests, valid ones (positive) and schema-violating ones (negative), to each operation
with the tenant key, and counts the answers: `{"requests", "client_errors", "server_errors", ...}`. A hardened server
answers every one with a 2xx or a 4xx; any 5xx is a bug, listed under `failures` with the request that caused it.

Used by tests/test_serve_fuzz.py and by the robustness benchmark (import this module with tests/ on sys.path).
Give the server a small `limits.max_tokens` so generated chat requests stay cheap.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

DEFAULT_PREFIXES = ("/v1/chat/completions", "/v1/search", "/v1/feedback", "/v1/curation", "/v1/models", "/health")


def _repair_chat(body: Any, question: str, max_tokens: int) -> Any:
    """A generated chat body made to pass the checks a schema cannot state (the last message is the user's
    question; max_tokens within the server's limit; n = 1), so fuzzing reaches retrieval and generation with the rest of
    the generated fields (stop, seed, temperature, ragtune options, earlier turns) as they are."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    earlier = body.get("messages") if isinstance(body.get("messages"), list) else []
    body["messages"] = [*earlier[:4], {"role": "user", "content": question or "What does the fox eat?"}]
    for field in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(field), int):
            body[field] = max(1, min(body[field], max_tokens))
    if "n" in body:
        body["n"] = 1
    return body


# Values that broke servers like this one: integers past int64 (SQLite, torch), floats past every range, NaN, lone
# surrogates (UTF-8 encoders), huge strings (echoed in errors), empty and wrong-typed containers.
NASTY_BODY: list[Any] = [2**63, -(2**63) - 1, 10**30, -1, 1e308, float("nan"), "\ud800", "Z" * 100_000, "", None, [],
                         {}]
NASTY_QUERY: list[Any] = [2**63, -(2**63) - 1, 10**30, -1, "", "Z" * 5_000, "NaN"]
# A valid request per body operation, cheap to answer (no retrieval, one token); the sweep varies one field at a time.
BASE_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What does the fox eat?"}],
                             "max_tokens": 1, "ragtune": {"k": 0, "cache": False}},
    "/v1/search": {"query": "fox", "k": 2},
    "/v1/feedback": {"question": "q", "answer": "a", "rating": "up"},
    "/v1/curation/items/{kind}/{item_id}": {"action": "accept"},
}
# Fields inside nested objects that the sweep also varies (dotted paths; a number indexes a list).
NESTED_FIELDS = ["messages.0.content", "messages.1.content", "messages.1.role", "messages.1.name", "ragtune.k",
                 "ragtune.mode", "ragtune.filters", "ragtune.cache", "edits"]


def _set(body: dict[str, Any], dotted: str, value: Any) -> dict[str, Any] | None:
    """A deep copy of `body` with the field at `dotted` set to `value`, or None when the path is not in it."""
    out = json.loads(json.dumps(body))
    parts = dotted.split(".")
    node: Any = out
    for part in parts[:-1]:
        key: Any = int(part) if part.isdigit() else part
        present = (isinstance(node, list) and isinstance(key, int) and key < len(node)) or (
            isinstance(node, dict) and key in node)
        if not present:
            return None
        node = node[key]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if isinstance(node, list) and not (isinstance(last, int) and last < len(node)):
        return None
    node[last] = value
    return out


def _body_fields(schema: dict[str, Any], op: Any) -> list[str]:
    """Top-level properties of an operation's JSON body (its $ref resolved in the document's components)."""
    raw = schema["paths"][op.path][op.method.lower()]
    body = (raw.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
    while isinstance(body, dict) and "$ref" in body:
        body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    return sorted((body or {}).get("properties", {}))


def sweep_requests(schema: dict[str, Any], operations: list[Any], base_url: str,
                   headers: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, requests kwargs): each operation's valid base request with one field (body field, nested field,
    query or path parameter) set to each nasty value in turn. Deterministic, unlike the generated passes, so every
    field meets every value."""
    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        raw = schema["paths"][op.path][op.method.lower()]
        params = [p for p in raw.get("parameters", []) if p.get("in") in ("query", "path")]
        path_values = {p["name"]: ("feedback" if p["name"] == "kind" else "x")
                       for p in params if p["in"] == "path"}
        base = BASE_BODIES.get(op.path)
        url = base_url + op.path.format(**path_values)
        if base is not None:
            for field in [*_body_fields(schema, op), *NESTED_FIELDS]:
                for value in NASTY_BODY:
                    body = _set(base, field, value)
                    if body is not None:
                        yield label, {"method": op.method.upper(), "url": url, "headers": dict(headers),
                                      "json": body}
        for p in params:
            for value in NASTY_QUERY:
                if p["in"] == "query":
                    yield label, {"method": op.method.upper(), "url": url, "headers": dict(headers),
                                  "params": {p["name"]: value}, **({"json": base} if base is not None else {})}
                elif isinstance(value, str) and value:
                    target = base_url + op.path.format(**{**path_values, p["name"]: value})
                    yield label, {"method": op.method.upper(), "url": target, "headers": dict(headers),
                                  **({"json": base} if base is not None else {})}


def fetch_schema(base_url: str, key: str) -> dict[str, Any]:
    """The server's OpenAPI document (served to admin keys only)."""
    import httpx

    r = httpx.get(base_url.rstrip("/") + "/openapi.json", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def fuzz_server(base_url: str, api_key: str, *, schema: dict[str, Any] | None = None, schema_key: str | None = None,
                max_examples: int = 30, seconds: float = 90.0, prefixes: Iterable[str] = DEFAULT_PREFIXES,
                negative: bool = True, sweep: bool = True, request_timeout: float = 60.0,
                max_tokens: int = 8) -> dict[str, Any]:
    """Fuzz every operation whose path starts with one of `prefixes`, `max_examples` cases per operation and mode,
    within about `seconds` in all (operations left when time runs out are skipped, and counted as such). Passes:
    valid cases as generated; for chat, valid cases repaired (`_repair_chat`, `max_tokens` at most the given one) so
    fuzzing reaches retrieval and generation; with `negative`, schema-violating cases; with `sweep`, every field of
    a valid base request set to every known-nasty value in turn (`sweep_requests`).

    Returns {"requests": N, "client_errors": M (4xx), "server_errors": K (5xx), "transport_errors": resets or
    timeouts, "by_status": {code: count}, "by_operation": {label: {code: count}}, "operations": [...],
    "skipped_operations": [...], "failures": [the first 20 5xx / transport errors, with their requests]}.
    """
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    base_url = base_url.rstrip("/")
    if schema is None:
        schema = fetch_schema(base_url, schema_key or api_key)
    loaded = schemathesis.openapi.from_dict(schema)
    prefixes = tuple(prefixes)
    operations = [r.ok() for r in loaded.get_all_operations()]
    operations = [op for op in operations if op.path.startswith(prefixes)]
    counts: dict[str, Any] = {"requests": 0, "client_errors": 0, "server_errors": 0, "transport_errors": 0,
                              "by_status": {}, "by_operation": {}, "client_error_samples": {}, "operations": [],
                              "sweep_incomplete": False,
                              "skipped_operations": [],
                              "failures": []}
    session = requests.Session()  # one keep-alive connection, as a real client: a 500 must not break it
    headers = {"Authorization": f"Bearer {api_key}"}
    stop_at = time.monotonic() + seconds

    def send(kwargs: dict[str, Any], label: str) -> None:
        if "json" in kwargs:  # serialised here, as any Python client would: \u escapes, NaN allowed
            kwargs["data"] = json.dumps(kwargs.pop("json")).encode()
            kwargs["headers"] = {**kwargs.get("headers", {}), "Content-Type": "application/json"}
        try:
            response = session.request(**kwargs, timeout=request_timeout)
        except Exception as exc:  # noqa: BLE001 - a reset connection or a timeout is a finding too
            counts["transport_errors"] += 1
            counts["failures"].append({"request": label, "url": kwargs.get("url", "")[:200],
                                       "error": f"{type(exc).__name__}: {exc}"[:300]})
            return
        status = response.status_code
        counts["requests"] += 1
        counts["by_status"][status] = counts["by_status"].get(status, 0) + 1
        per_op = counts["by_operation"].setdefault(label, {})
        per_op[status] = per_op.get(status, 0) + 1
        if 400 <= status < 500:
            counts["client_errors"] += 1
            samples = counts["client_error_samples"].setdefault(label, [])
            if len(samples) < 5:
                samples.append(response.text[:200])
        elif status >= 500:
            counts["server_errors"] += 1
            if len(counts["failures"]) < 20:
                counts["failures"].append({"request": label, "url": kwargs.get("url", "")[:200], "status": status,
                                           "params": repr(kwargs.get("params"))[:300],
                                           "body": kwargs.get("data", b"")[:300].decode("utf-8", "replace"),
                                           "response": response.text[:300]})

    def runner(strategy: Any, label: str, repair: bool) -> Any:
        @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
        @given(case=strategy, question=st.text(max_size=200))
        def run(case: Any, question: str) -> None:
            if time.monotonic() > stop_at:
                return
            if repair:
                case.body = _repair_chat(case.body, question.strip(), max_tokens)
            send(case.as_transport_kwargs(base_url=base_url, headers=headers), label)

        return run

    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        if time.monotonic() > stop_at:
            counts["skipped_operations"].append(label)
            continue
        counts["operations"].append(label)
        # (mode, repair): valid as generated; chat repaired so it reaches generation; schema-violating
        passes = [(GenerationMode.POSITIVE, False)]
        if op.path == "/v1/chat/completions":
            passes.append((GenerationMode.POSITIVE, True))
        if negative:
            passes.append((GenerationMode.NEGATIVE, False))
        for mode, repair in passes:
            with contextlib.suppress(Unsatisfiable):  # nothing to break: negative mode, no parameters
                runner(op.as_strategy(generation_mode=mode), label, repair)()
    if sweep:
        for label, kwargs in sweep_requests(schema, operations, base_url, headers):
            if time.monotonic() > stop_at:
                counts["sweep_incomplete"] = True
                break
            send(kwargs, label)
    session.close()
    return counts
