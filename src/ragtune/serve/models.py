"""The models one `ragtune serve` answers for, chosen by a request's `model` name, and what generates for each.

- One model (no `--adapter`, or one): every request gets it, whatever `model` it names (as before, and as llama.cpp's
  server does), so existing client code keeps working.
- Several (`--adapter A --adapter B`, named `NAME=PATH` or after their run folder `ws/train/NAME/adapter` -> NAME):
  each adapter by its name, and the base model under the server's name; a request naming none gets the first
  adapter; a request naming an unknown model gets 404 `model_not_found` with the list.

What generates: with the llama.cpp engine, one `SlotEngine` (continuous batching over parallel slots; all adapters
over one copy of the base weights); with vLLM, the one engine, each adapter a LoRA request by name; otherwise one
`Batcher` per model (each model loaded once, the base weights too, so several adapters cost one copy each).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ragtune.llm.base import LLM, Generation, GenerationConfig, Message
from ragtune.llm.server import Batcher
from ragtune.serve.schemas import APIError

if TYPE_CHECKING:
    from ragtune.llm.llamacpp_backend import LlamaCppLLM


def adapter_specs(values: list[str] | None) -> dict[str, str]:
    """`--adapter` values as {name: path}: `NAME=PATH`, else named after the run (`.../NAME/adapter` -> NAME) or the
    folder / file stem. Names must be unique."""
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or "/" in name:
            path = value
            p = Path(value.rstrip("/"))
            name = p.parent.name if p.name == "adapter" and p.parent.name else (p.stem if p.suffix else p.name)
        if name in out:
            raise ValueError(f"two adapters are named {name!r}; name them explicitly: --adapter NAME=PATH")
        out[name] = path
    return out


@dataclass
class Route:
    """One served model: its name and the scheduler (Batcher or SlotEngine) that generates for it."""

    name: str
    scheduler: Any
    engine_model: str | None = None  # the name the scheduler knows it by (a SlotEngine / vLLM adapter); None: its own

    def submit(self, messages: list[Message], config: GenerationConfig, on_text: Callable[[str], None] | None = None,
               cancel: threading.Event | None = None) -> Future:
        if self.engine_model is None:
            return self.scheduler.submit(messages, config, on_text, cancel)
        return self.scheduler.submit(messages, config, on_text, cancel, model=self.engine_model)


class ModelRouter:
    """Request `model` name -> Route. The first route is the default."""

    def __init__(self, routes: list[Route]):
        if not routes:
            raise ValueError("a server needs at least one model")
        names = [r.name for r in routes]
        if len(set(names)) != len(names):
            raise ValueError(f"two served models share a name: {names}")
        self.routes = {r.name: r for r in routes}
        self.default = routes[0]

    @property
    def names(self) -> list[str]:
        return list(self.routes)

    def route(self, requested: str | None) -> Route:
        if len(self.routes) == 1 or not requested:
            return self.default
        found = self.routes.get(requested)
        if found is None:
            shown = requested if len(requested) <= 60 else requested[:60] + "..."
            raise APIError(404, f"no model {shown!r} on this server; served: {', '.join(self.routes)}",
                           type="not_found_error", param="model", code="model_not_found")
        return found

    def schedulers(self) -> list[Any]:
        return list({id(r.scheduler): r.scheduler for r in self.routes.values()}.values())

    def set_timeout(self, seconds: float | None) -> None:
        for scheduler in self.schedulers():
            scheduler.timeout_s = seconds

    def health(self, stall_after_s: float) -> dict[str, Any]:
        """The worst state of any scheduler, with the counters summed."""
        states = [s.health(stall_after_s) for s in self.schedulers()]
        bad = next((s for s in states if s["status"] != "ok"), None)
        busy = [s["busy_s"] for s in states if s["busy_s"] is not None]
        return {"status": "degraded" if bad else "ok", "reason": bad["reason"] if bad else None,
                "queued": sum(s["queued"] for s in states), "busy_s": max(busy) if busy else None}

    def counter(self, name: str) -> int:
        return sum(int(getattr(s, name, 0)) for s in self.schedulers())


class AdapterView(LLM):
    """One adapter of an engine that serves several by name (vLLM): `generate` passes `adapter=`."""

    def __init__(self, llm: LLM, adapter: str | None):
        self.inner, self.adapter_name, self.name = llm, adapter, adapter or llm.name
        self.supports_cancel = bool(getattr(llm, "supports_cancel", False))

    def generate(self, conversations: list[list[Message]], config: GenerationConfig | None = None,
                 batch_size: int = 8, **kw: Any) -> list[Generation]:
        return self.inner.generate(conversations, config, batch_size, adapter=self.adapter_name, **kw)  # type: ignore[call-arg]

    def loglikelihood(self, requests: list[tuple[list[Message], str]], batch_size: int = 8) -> list[float]:
        return self.inner.loglikelihood(requests, batch_size)


def build_router(llm: LLM, name: str, adapters: dict[str, str], max_batch: int = 16, batch_wait_ms: float = 20.0,
                 slots: int = 8, slot_ctx: int = 2048, load: Callable[[str], LLM] | None = None) -> ModelRouter:
    """The routes for `llm` (the base model, or the one tuned model when `adapters` is empty and it was loaded with
    its adapter) served as `name`, plus `adapters`. `load(path)` loads base + one adapter for engines that hold one
    adapter per model (transformers, CTranslate2). `slots` > 0 with the llama.cpp engine: continuous batching."""
    engine = getattr(type(llm), "engine", "")
    if engine == "llamacpp" and slots > 0:
        from ragtune.llm.llamacpp_slots import SlotEngine

        own = getattr(llm, "adapter", None)  # loaded with its LoRA: the slots' context must apply it too
        if own and adapters:
            raise ValueError("load the llama.cpp base model without an adapter when serving several adapters")
        adapters = adapters or ({name: own} if own else {})
        single = len(adapters) == 1
        # one adapter is the server's one model, under the server's name; several are each by their own name
        named = {name: next(iter(adapters.values()))} if single else adapters
        engine_obj = SlotEngine(cast("LlamaCppLLM", llm), slots=slots, slot_ctx=slot_ctx, adapters=named,
                                base_name=f"{name}::base" if single else name)
        routes = [Route(n, engine_obj, n) for n in named]
        if not single:
            routes.append(Route(name, engine_obj, name))
        return ModelRouter(routes)
    if not adapters:
        return ModelRouter([Route(name, Batcher(llm, max_batch=max_batch, batch_wait_ms=batch_wait_ms))])
    if llm.capabilities.multi_lora:  # vLLM: adapters by name on one engine (loaded with them)
        routes = [Route(n, Batcher(AdapterView(llm, n), max_batch=max_batch, batch_wait_ms=batch_wait_ms))
                  for n in adapters]
        return ModelRouter([*routes, Route(name, Batcher(AdapterView(llm, None), max_batch=max_batch,
                                                         batch_wait_ms=batch_wait_ms))])
    if load is None:
        raise ValueError(f"engine {engine or type(llm).__name__!r} holds one adapter per model: pass `load`")
    if len(adapters) == 1:
        return ModelRouter([Route(name, Batcher(llm, max_batch=max_batch, batch_wait_ms=batch_wait_ms))])
    routes = [Route(n, Batcher(load(path), max_batch=max_batch, batch_wait_ms=batch_wait_ms))
              for n, path in adapters.items()]
    return ModelRouter([*routes, Route(name, Batcher(llm, max_batch=max_batch, batch_wait_ms=batch_wait_ms))])
