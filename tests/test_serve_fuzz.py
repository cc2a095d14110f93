"""Property-based API fuzzing of a live `ragtune serve` from its own OpenAPI schema: zero 5xx.

schemathesis generates valid and schema-violating requests for chat completions, search, feedback and the curation
routes (a tenant key), plus a sweep of known-nasty values through every field, bounded in examples per operation and
in total time (~35 s of fuzzing here); every answer must be a 2xx or a 4xx, on one keep-alive connection throughout.
The server runs a tiny config (max_tokens 8) so generated chats stay cheap.
"""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency: pip install -e '.[dev]'")

from serve_fuzz_support import fetch_schema, fuzz_server  # noqa: E402
from serve_support import Server, build_workspace  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory, embedder):
    from ragtune.serve.tenants import TenantStore

    root = tmp_path_factory.mktemp("serve_fuzz")
    ws = build_workspace(root, embedder)
    store = TenantStore(ws)
    keys = {"acme": store.add("acme"), "admin": store.add("globex", admin=True)}
    config = root / "serve.yaml"
    config.write_text("serve:\n  default_max_tokens: 2\n  limits:\n    max_tokens: 8\n    generation_timeout_s: 45\n")
    server = Server(ws, "--config", str(config))
    yield {"ws": ws, "keys": keys, "url": server.url, "server": server}
    server.stop()


def test_schema_covers_the_fuzzed_routes(env):
    paths = fetch_schema(env["url"], env["keys"]["admin"])["paths"]
    for path in ("/v1/chat/completions", "/v1/search", "/v1/feedback", "/v1/curation/items",
                 "/v1/curation/items/{kind}/{item_id}", "/v1/curation/summary"):
        assert path in paths, sorted(paths)


def test_fuzzing_the_live_server_gives_no_5xx(env):
    result = fuzz_server(env["url"], env["keys"]["acme"], schema_key=env["keys"]["admin"], max_examples=30,
                         seconds=80)
    assert result["server_errors"] == 0 and result["transport_errors"] == 0, result["failures"]
    assert result["requests"] >= 500, result
    assert not result["skipped_operations"] and not result["sweep_incomplete"], result  # all within the budget
    chat = result["by_operation"]["POST /v1/chat/completions"]
    assert chat.get(200, 0) >= 20 and chat.get(400, 0) >= 20, chat  # generation reached, and validation
    assert health_after(env) == "ok"


def health_after(env) -> str:
    import httpx

    return httpx.get(env["url"] + "/health", timeout=30).json()["status"]
