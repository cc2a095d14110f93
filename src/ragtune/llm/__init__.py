"""`load_llm(ref)`: one call that turns any model reference into an `LLM`.

- `None` / a bundled name / a local folder / a `.gguf` file / a hub id: a local transformers model
  (`adapter=` adds a LoRA adapter through peft).
- `openai:MODEL`: an OpenAI-compatible server; base URL and key come from the keyword arguments or from
  OPENAI_BASE_URL / OPENAI_API_KEY.
"""

from __future__ import annotations

from typing import Any

from ragtune.llm.base import LLM, Generation, GenerationConfig, Message, OnText, Usage

__all__ = ["LLM", "Generation", "GenerationConfig", "Message", "OnText", "Usage", "load_llm"]

_OPENAI_KEYS = {
    "base_url",
    "api_key",
    "timeout",
    "max_retries",
    "backoff",
    "max_backoff",
    "concurrency",
    "price_in",
    "price_out",
    "extra_body",
}
_LOCAL_KEYS = {"device", "dtype", "max_length"}


def load_llm(ref: str | None = None, adapter: str | None = None, **kw: Any) -> LLM:
    """Load a chat model. Unknown keyword arguments for the chosen backend are ignored, so a CLI can pass all."""
    from ragtune.models import resolve_generator

    if ref and ref.startswith("openai:"):
        if adapter:
            raise ValueError("--adapter applies to local models only; load the adapter in the server instead")
        from ragtune.llm.openai_backend import OpenAILLM

        return OpenAILLM(ref.split(":", 1)[1], **{k: v for k, v in kw.items() if k in _OPENAI_KEYS and v is not None})
    from ragtune.llm.transformers_backend import TransformersLLM

    resolved = resolve_generator(ref)
    local = {k: v for k, v in kw.items() if k in _LOCAL_KEYS and v is not None}
    return TransformersLLM(resolved.path, adapter=adapter, name=resolved.reference, **local)
