"""The RAG server: OpenAI-compatible API over a workspace, per-tenant keys, guardrails, semantic cache, feedback and a
curation page. `ragtune serve` runs it; `create_app(RagPipeline(...))` builds it in Python."""

from ragtune.serve.app import create_app
from ragtune.serve.pipeline import RagPipeline, ServeConfig

__all__ = ["RagPipeline", "ServeConfig", "create_app"]
