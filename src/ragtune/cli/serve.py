"""`ragtune serve` and `ragtune tenants ...`: thin typer commands over `ragtune.serve`, with the options, consoles and
one-line errors every other command uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ragtune.cli.common import console, out, pydantic_message
from ragtune.cli.common import fail as _fail
from ragtune.cli.options import WorkspaceOption, engine_option

tenants_app = typer.Typer(
    help="API keys: each key belongs to one tenant and sees only that tenant's documents, cache and feedback.",
    no_args_is_help=True, add_completion=False,
)


@tenants_app.command("add")
def tenants_add(
    name: str = typer.Argument(..., help="Tenant name; ingest its documents with `ragtune ingest ... --tenant NAME`."),
    workspace: Path = WorkspaceOption,
    admin: bool = typer.Option(False, "--admin", help="The key may also review the workspace's generated RAFT "
                               "examples on the curation page."),
) -> None:
    """Create a tenant (or a further key for an existing one) and print its API key, once, as the last word.

    Only a SHA-256 of the key is stored (WORKSPACE/serve/tenants.json); a lost key cannot be recovered, add another.
    """
    from ragtune.serve.tenants import TenantError, TenantStore

    try:
        key = TenantStore(workspace).add(name, admin=admin)
    except TenantError as exc:
        _fail(str(exc))
    out.print(f"[green]tenant[/] {name}: new {'admin ' if admin else ''}key (shown once, store it now):")
    out.print(key, highlight=False)


@tenants_app.command("list")
def tenants_list(workspace: Path = WorkspaceOption) -> None:
    """Tenants and their key ids (never the keys)."""
    from ragtune.serve.tenants import TenantStore

    rows = TenantStore(workspace).list()
    if not rows:
        console.print("no tenants yet: `ragtune tenants add NAME`")
        return
    table = Table()
    for col in ("tenant", "keys", "admin"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["tenant"], ", ".join(r["keys"]), "yes" if r["admin"] else "")
    out.print(table)


@tenants_app.command("remove")
def tenants_remove(name: str = typer.Argument(...), workspace: Path = WorkspaceOption) -> None:
    """Revoke every key of a tenant (a running server refuses them at once); documents and feedback stay."""
    from ragtune.serve.tenants import TenantError, TenantStore

    try:
        n = TenantStore(workspace).remove(name)
    except TenantError as exc:
        _fail(str(exc))
    console.print(f"removed tenant {name} ({n} keys revoked)")


def load_settings(config: Path | None, overrides: dict[str, Any]) -> tuple[Any, Any]:
    """(SearchConfig, ServeConfig) from an optional YAML file with `search:` and `serve:` sections, then CLI options
    given explicitly on top. Every SearchConfig field (query transforms, rerank, ...) flows through unchanged."""
    import yaml
    from pydantic import ValidationError

    from ragtune.config import SearchConfig
    from ragtune.serve.pipeline import ServeConfig

    raw: dict[str, Any] = {}
    if config is not None:
        if not config.exists():
            _fail(f"no such config file: {config}")
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        unknown = set(raw) - {"search", "serve"}
        if unknown:
            _fail(f"{config}: unknown section(s) {', '.join(sorted(unknown))}; expected search: and serve:")
    search_raw = dict(raw.get("search") or {})
    serve_raw = dict(raw.get("serve") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, field = key.partition(".")
        (search_raw if section == "search" else serve_raw)[field] = value
    try:
        return SearchConfig.model_validate(search_raw), ServeConfig.model_validate(serve_raw)
    except ValidationError as exc:
        _fail(pydantic_message(exc))


def serve(
    workspace: Path = WorkspaceOption,
    model: str = typer.Option(None, "--model", "-m", help="Generator: bundled name, folder, .gguf, hub id, or "
                              "openai:MODEL for an OpenAI-compatible server (default: bundled SmolLM2)."),
    adapter: list[str] = typer.Option(None, "--adapter", help="LoRA adapter folder (e.g. from `ragtune train sft`); "
                                      "repeat it to serve several by request `model` name (NAME=PATH, or named "
                                      "after the run: ws/train/NAME/adapter -> NAME), the base model beside them."),
    retriever: str = typer.Option(None, "--retriever", help="Trained retriever folder: its query encoder embeds "
                                  "queries (`ragtune train retriever`)."),
    rerank: str = typer.Option(None, "--rerank", help="Cross-encoder folder or hub id re-scoring the first stage."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML with a `search:` section (any SearchConfig field) "
                                "and a `serve:` section (any ServeConfig field); options given here win."),
    name: str = typer.Option(None, "--name", help="Model id reported by /v1/models and in responses."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    k: int = typer.Option(None, "-k", "--top-k", help="Chunks given to the model per question (default 5)."),
    mode: str = typer.Option(None, "--mode", help="hybrid | dense | bm25 (default hybrid)."),
    prompt: str = typer.Option(None, "--prompt", help="short | cot (the RAFT student layout). Default: cot with "
                               "--adapter, short otherwise."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Default max_tokens when a request gives none (256)."),
    cache_threshold: float = typer.Option(None, "--cache-threshold", help="Cosine similarity at which a question "
                                          "reuses a cached answer (0.95)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Turn the semantic cache off."),
    injection_policy: str = typer.Option(None, "--injection-policy", help="drop (default): chunks that read like "
                                         "instructions are left out of the prompt; flag: kept but reported."),
    redact_pii: bool = typer.Option(False, "--redact-pii", help="Redact e-mails, phone / card numbers, ... in the "
                                    "request log."),
    max_batch: int = typer.Option(None, "--max-batch", help="Most requests generated together (16)."),
    slots: int = typer.Option(None, "--slots", help="llama.cpp engine: sequences decoded together, continuous "
                              "batching (4; 0: one request at a time)."),
    slot_ctx: int = typer.Option(None, "--slot-ctx", help="llama.cpp engine: tokens per slot, prompt + answer "
                                 "(2048)."),
    dtype: str = typer.Option(None, "--dtype", help="Local model dtype: auto | float32 | bfloat16 | float16 "
                              "(default float32 on CPU). llamacpp: the GGUF type the model is re-encoded at (default "
                              "f16; auto: bf16 on CPUs with native bf16, 1.3x faster here: see the README)."),
    device: str = typer.Option(None, "--device", help="Local model device (default: cuda if available, else cpu)."),
    engine: str = engine_option(" Here transformers and llamacpp stream and cancel; llamacpp decodes --slots "
                                "requests together (continuous batching) and serves several adapters over one base, "
                                "as vllm does."),
) -> None:
    """Serve the workspace as an OpenAI-compatible RAG API (+ search, feedback and a curation page at /curate).

    Point any OpenAI client at http://HOST:PORT/v1 with a tenant key (`ragtune tenants add NAME`). Each key sees only
    the documents ingested with `--tenant NAME`. Feedback lands in WORKSPACE/serve/feedback.sqlite3;
    `ragtune synth from-feedback` turns it into training data.
    """
    import uvicorn

    from ragtune.llm import load_llm
    from ragtune.models import ModelNotFoundError
    from ragtune.serve.app import create_app
    from ragtune.serve.models import adapter_specs, build_router
    from ragtune.serve.pipeline import RagPipeline
    from ragtune.serve.tenants import TenantStore

    try:
        adapters = adapter_specs(adapter)
    except ValueError as exc:
        _fail(str(exc))

    search_config, serve_config = load_settings(config, {
        "search.retriever": retriever, "search.reranker": rerank, "search.k": k, "search.mode": mode,
        "serve.prompt": prompt or ("cot" if adapters and not (config and _yaml_sets(config, "prompt")) else None),
        "serve.default_max_tokens": max_tokens, "serve.cache_threshold": cache_threshold,
        "serve.cache": False if no_cache else None, "serve.injection_policy": injection_policy,
        "serve.redact_pii": True if redact_pii else None, "serve.max_batch": max_batch, "serve.slots": slots,
        "serve.slot_ctx": slot_ctx,
    })
    if not (workspace / "index").exists():
        _fail(f"no index in workspace {workspace}: run `ragtune ingest PATH --workspace {workspace} --tenant NAME` "
              "first")
    shown = ", ".join(adapters)
    console.print(f"loading model {model or 'smollm2-135m-instruct (bundled)'}{' + ' + shown if shown else ''} ...")
    served = name or model or "smollm2-135m-instruct"
    options: dict[str, Any] = {"dtype": dtype, "device": device, "engine": engine}
    try:
        # one adapter per loaded model, except the engines that hold several over one base (llama.cpp slots, vLLM)
        per_model = len(adapters) == 1 and not (engine == "llamacpp" and serve_config.slots > 0) and engine != "vllm"
        if engine == "vllm" and adapters:
            options["adapters"] = adapters
        llm = load_llm(model, adapter=next(iter(adapters.values())) if per_model else None, **options)
        router = build_router(llm, served, {} if per_model else adapters, serve_config.max_batch,
                              serve_config.batch_wait_ms, serve_config.slots, serve_config.slot_ctx,
                              load=lambda path: load_llm(model, adapter=path, **options))
        pipeline = RagPipeline(workspace, llm, search_config, serve_config, model_name=served, router=router)
    except (ModelNotFoundError, FileNotFoundError, KeyError, ValueError, OSError, ImportError, RuntimeError,
            NotImplementedError) as exc:
        _fail(str(exc))
    counts = pipeline.warm()
    tenants = TenantStore(workspace)
    if not tenants.list():
        console.print("[yellow]warning:[/] no tenants yet, so every request gets 401: create a key with "
                      f"`ragtune tenants add NAME --workspace {workspace}`")
    if counts["untagged"]:
        console.print(f"[yellow]warning:[/] {counts['untagged']} of {counts['chunks']} chunks have no tenant and are "
                      "served to nobody: ingest them with `--tenant NAME`")
    base = f"http://{host}:{port}"
    console.print(f"[green]serving[/] {', '.join(router.names)} · {counts['chunks']} chunks · OpenAI base_url "
                  f"{base}/v1 · curation page "
                  f"{base}/curate · OpenAPI schema {base}/openapi.json (admin key)")
    uvicorn.run(create_app(pipeline, tenants), host=host, port=port, log_level="warning")


def _yaml_sets(config: Path, field: str) -> bool:
    import yaml

    raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    return field in (raw.get("serve") or {})


def register(app: typer.Typer) -> None:
    """Add `serve` and the `tenants` group to the main ragtune app."""
    app.command("serve")(serve)
    app.add_typer(tenants_app, name="tenants")
