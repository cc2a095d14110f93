"""What each generation engine can do, declared once, so a missing capability is a clear error before any work starts.

Engines differ in more than speed: vLLM's in-process `LLM` batches continuously and swaps LoRA adapters per request
but does not stream; llama.cpp streams and stops on request but runs one adapter per loaded model; CTranslate2 scores
continuations but cannot stream. A stage that needs a capability (RA-DIT's LSR training and the LLM reranker need
log-likelihoods; `serve` streaming needs token pieces; several adapters behind one base need LoRA hot-swap) asks for it
with `LLM.require(...)` or `load_llm(..., require=[...])` and gets an error that names the engine, the capability and
the engines that have it, instead of a silently wrong number or a crash deep in a backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

CAPABILITIES: dict[str, str] = {
    "loglikelihood": "log-likelihood scoring of a given answer (RA-DIT LSR retriever training, the LLM reranker)",
    "streaming": "token-by-token streaming",
    "cancel": "cancelling a generation when its client hangs up",
    "lora": "a LoRA adapter on the base model",
    "multi_lora": "several LoRA adapters behind one base, chosen per request (hot-swap)",
    "continuous_batching": "continuous batching (requests join a running batch)",
}


@dataclass(frozen=True)
class Capabilities:
    """The answer to "can this engine do X?". Field names are the keys of `CAPABILITIES`."""

    loglikelihood: bool = False
    streaming: bool = False
    cancel: bool = False
    lora: bool = False
    multi_lora: bool = False
    continuous_batching: bool = False

    def has(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
        return bool(getattr(self, capability))

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


# Declared per engine, so `load_llm(require=...)` can refuse before loading weights (seconds to minutes).
ENGINE_CAPABILITIES: dict[str, Capabilities] = {
    "transformers": Capabilities(loglikelihood=True, streaming=True, cancel=True, lora=True),
    "ct2": Capabilities(loglikelihood=True, lora=True),  # a LoRA is merged before conversion
    "llamacpp": Capabilities(loglikelihood=True, streaming=True, cancel=True, lora=True),
    "vllm": Capabilities(loglikelihood=True, lora=True, multi_lora=True, continuous_batching=True),
    # scoring only against a ragtune server (`/ragtune/loglikelihood`); other servers raise a clear error when asked
    "openai": Capabilities(loglikelihood=True),
}


class CapabilityError(NotImplementedError):
    """An engine was asked for something it cannot do. The message names the engine, the capability and who can."""

    def __init__(self, engine: str, capability: str, purpose: str = ""):
        self.engine, self.capability = engine, capability
        able = [name for name, caps in ENGINE_CAPABILITIES.items() if caps.has(capability)]
        what = CAPABILITIES.get(capability, capability)
        needed = f" (needed for {purpose})" if purpose else ""
        hint = f"; engines that support it: {', '.join(able)}" if able else ""
        super().__init__(f"engine {engine!r} does not support {capability}: {what}{needed}{hint}")


def engine_capabilities(engine: str) -> Capabilities:
    try:
        return ENGINE_CAPABILITIES[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINE_CAPABILITIES)}") from None


def check(engine: str, capabilities: Capabilities, wanted: Iterable[str], purpose: str = "") -> None:
    """Raise `CapabilityError` for the first capability in `wanted` that `capabilities` lacks."""
    for capability in wanted:
        if not capabilities.has(capability):
            raise CapabilityError(engine, capability, purpose)


def engine_of(llm: Any) -> str:
    """The engine name of an LLM: its declared `engine`, else its backend module (`ragtune.llm.X_backend` -> X)."""
    declared = getattr(type(llm), "engine", "")
    if declared:
        return str(declared)
    module = type(llm).__module__.rsplit(".", 1)[-1]
    return module.removesuffix("_backend") if module.endswith("_backend") else type(llm).__name__


def capabilities_of(llm: Any) -> Capabilities:
    """An LLM's declared capabilities (`declared_capabilities` on its class), else its engine's, else what its class
    overrides shows (a custom `LLM` subclass: streaming if it overrides `generate_stream`, cancel if it says so)."""
    declared = getattr(type(llm), "declared_capabilities", None)
    if isinstance(declared, Capabilities):
        return declared
    engine = engine_of(llm)
    if engine in ENGINE_CAPABILITIES:
        return ENGINE_CAPABILITIES[engine]
    from ragtune.llm.base import LLM

    return Capabilities(
        loglikelihood=True,
        streaming=type(llm).generate_stream is not LLM.generate_stream,
        cancel=bool(getattr(llm, "supports_cancel", False)),
        lora=bool(getattr(llm, "adapter", None)),
    )
