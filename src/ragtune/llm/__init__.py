"""`load_llm(ref)`: one call that turns any model reference into an `LLM`.

- `None` / a bundled name / a local folder / a `.gguf` file / a hub id: a local model, run by `engine`:
  `transformers` (default; `adapter=` adds a LoRA through peft, `merge_adapter=True` folds it into the weights for
  inference), `ct2` (CTranslate2: the same weights converted once, LoRA merged first; `pip install ctranslate2`),
  `llamacpp` (llama-cpp-python on the GGUF file, a LoRA as a GGUF adapter; `pip install llama-cpp-python`) or `vllm`
  (vLLM in-process, several LoRA adapters by name; a GPU and `pip install vllm`).
- `require=["loglikelihood", ...]`: refuse, before loading anything, an engine that lacks a capability
  (`ragtune.llm.capabilities`), with an error naming the engine and the capability.
- `openai:MODEL`: an OpenAI-compatible server; base URL and key come from the keyword arguments or from
  OPENAI_BASE_URL / OPENAI_API_KEY.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ragtune.llm.base import LLM, Generation, GenerationConfig, Message, OnText, Usage
from ragtune.llm.capabilities import Capabilities, CapabilityError, check, engine_capabilities

__all__ = [
    "ENGINES", "LLM", "Capabilities", "CapabilityError", "Generation", "GenerationConfig", "Message", "OnText",
    "Usage", "load_llm", "resolve_dtype",
]

ENGINES = ("transformers", "ct2", "llamacpp", "vllm")

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
_LOCAL_KEYS = {"device", "dtype", "max_length", "merge_adapter", "attn_implementation", "generate_options",
               "fast_prefill"}
_CT2_KEYS = {"device", "dtype", "max_length", "compute_type"}
_LLAMACPP_KEYS = {"max_length", "n_threads", "n_gpu_layers", "lora_scale", "llama_cpp_dir", "seed", "gguf_quant",
                  "flash_attn"}
_VLLM_KEYS = {"dtype", "max_length", "adapters", "gpu_memory_utilization", "tensor_parallel_size", "seed"}


def resolve_dtype(dtype: str | None, device: str | None = None) -> str:
    """The dtype name a local transformers model would run in (`auto` resolved for this machine), loading nothing:
    what an answer cache keys on. See `ragtune.llm.transformers_backend.resolve_dtype`."""
    from ragtune.llm.transformers_backend import resolve_dtype as resolve

    return resolve(dtype, device)


def load_llm(ref: str | None = None, adapter: str | None = None, engine: str | None = None,
             require: Iterable[str] = (), **kw: Any) -> LLM:
    """Load a chat model. Unknown keyword arguments for the chosen backend are ignored, so a CLI can pass all."""
    from ragtune.models import resolve_generator

    wanted = [*require, *(["lora"] if adapter else [])]
    if ref and ref.startswith("openai:"):
        check("openai", engine_capabilities("openai"), [w for w in wanted if w != "lora"])
        if adapter:
            raise ValueError("--adapter applies to local models only; load the adapter in the server instead")
        from ragtune.llm.openai_backend import OpenAILLM

        return OpenAILLM(ref.split(":", 1)[1], **{k: v for k, v in kw.items() if k in _OPENAI_KEYS and v is not None})
    engine = engine or "transformers"
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINES)}")
    check(engine, engine_capabilities(engine), wanted)
    if engine == "llamacpp":  # runs the GGUF file itself: no conversion to a Hugging Face folder for a .gguf ref
        from ragtune.llm.llamacpp_backend import LlamaCppLLM, gguf_type_for

        options = {k: v for k, v in kw.items() if k in _LLAMACPP_KEYS and v is not None}
        options.setdefault("gguf_quant", gguf_type_for(kw.get("dtype"), int(options.get("n_gpu_layers") or 0)))
        return LlamaCppLLM(ref, adapter=adapter, **options)
    resolved = resolve_generator(ref)
    if engine == "vllm":
        from ragtune.llm.vllm_backend import VLLMLLM

        options = {k: v for k, v in kw.items() if k in _VLLM_KEYS and v is not None}
        return VLLMLLM(resolved.path, adapter=adapter, name=resolved.reference, **options)
    if engine == "ct2":
        from ragtune.llm.ct2_backend import CTranslate2LLM

        ct2 = {k: v for k, v in kw.items() if k in _CT2_KEYS and v is not None}
        return CTranslate2LLM(resolved.path, adapter=adapter, name=resolved.reference, **ct2)
    from ragtune.llm.transformers_backend import TransformersLLM

    local = {k: v for k, v in kw.items() if k in _LOCAL_KEYS and v is not None}
    return TransformersLLM(resolved.path, adapter=adapter, name=resolved.reference, **local)
