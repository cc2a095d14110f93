"""Local chat models through vLLM's in-process `LLM`: continuous batching, paged attention, several LoRA adapters.

Why vLLM: on a GPU it schedules every request of a batch continuously (a short answer frees its slot for the next
prompt at once) and serves many LoRA adapters over one copy of the base weights, each request naming its adapter
(`LoRARequest`). That is what evaluation of several tuned systems and a multi-tenant server want. It needs a CUDA
GPU (or vLLM's own CPU build); `pip install vllm` (or `pip install ragtune[vllm]`).

Prompts are rendered and tokenised with the model's Hugging Face tokenizer and chat template and passed as token ids,
so vLLM sees the prompt tokens the transformers backend would; answers are vLLM's own detokenised text, cut at stop
strings. `loglikelihood` reads vLLM's prompt log-probabilities (`prompt_logprobs=0`) of the continuation tokens.

Everything that builds vLLM's arguments is a plain function (`engine_args`, `sampling_args`, `lora_requests`) so it
is tested on machines without vLLM or a GPU; `VLLMLLM` itself imports vLLM only when constructed.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.llm.base import LLM, Generation, GenerationConfig, Message
from ragtune.llm.capabilities import ENGINE_CAPABILITIES

INSTALL_HINT = ("the vllm engine needs vLLM (a CUDA GPU, or vLLM's CPU build): `pip install vllm` "
                "(or ragtune with its vllm extra); on a CPU machine use --engine transformers, ct2 or llamacpp")


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter served by name: `model=NAME` in a request (or `adapter=NAME` in `generate`) selects it."""

    name: str
    path: str
    lora_int_id: int


def adapter_rank(path: str | Path) -> int:
    """The LoRA rank of a PEFT adapter folder (vLLM must be told the largest rank it will serve)."""
    config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [int(config.get("r", 8))] + [int(r) for r in (config.get("rank_pattern") or {}).values()]
    return max(ranks)


def lora_requests(adapters: list[str] | dict[str, str] | None) -> list[Adapter]:
    """Name each adapter (a dict maps name -> folder; a list is named after each folder's run, `NAME/adapter` ->
    NAME) and give it the positive integer id vLLM's LoRA cache keys on. Names must be unique."""
    if not adapters:
        return []
    items = list(adapters.items()) if isinstance(adapters, dict) else [(_adapter_name(p), p) for p in adapters]
    seen: set[str] = set()
    out = []
    for i, (name, path) in enumerate(items, start=1):
        if name in seen:
            raise ValueError(f"two adapters are named {name!r}; name them explicitly (NAME=PATH)")
        if not (Path(path) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{path}: not a PEFT LoRA adapter folder (no adapter_config.json)")
        seen.add(name)
        out.append(Adapter(name, str(Path(path).resolve()), i))
    return out


def _adapter_name(path: str) -> str:
    p = Path(path.rstrip("/"))
    return p.parent.name if p.name == "adapter" and p.parent.name else p.name


def engine_args(
    model: str,
    adapters: list[Adapter] | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    gpu_memory_utilization: float = 0.85,
    tensor_parallel_size: int = 1,
    seed: int = 0,
    enforce_eager: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)`: LoRA switched on (with room for every adapter at its largest rank) only
    when there are adapters, the dtype mapped to vLLM's names ("auto" lets vLLM pick bf16 / fp16 for the GPU)."""
    dtypes = {None: "auto", "auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
              "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}
    if dtype not in dtypes:
        raise ValueError(f"unknown dtype {dtype!r} for vLLM; expected one of auto, float32, bfloat16, float16")
    args: dict[str, Any] = {
        "model": model, "tokenizer": model, "dtype": dtypes[dtype], "seed": seed,
        "gpu_memory_utilization": gpu_memory_utilization, "tensor_parallel_size": tensor_parallel_size,
        "enforce_eager": enforce_eager,
    }
    if max_length:
        args["max_model_len"] = int(max_length)
    if adapters:
        args.update(enable_lora=True, max_loras=len(adapters), max_lora_rank=_vllm_rank(
            max(adapter_rank(a.path) for a in adapters)))
    return args


def _vllm_rank(rank: int) -> int:
    """vLLM accepts max_lora_rank from a fixed set; the smallest that holds `rank`."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above what vLLM serves (512)")


def sampling_args(config: GenerationConfig) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams(...)`: greedy is temperature 0 (vLLM's own greedy path)."""
    args: dict[str, Any] = {"max_tokens": config.max_new_tokens, "temperature": max(0.0, config.temperature),
                            "top_p": config.top_p if config.temperature > 0 else 1.0, "skip_special_tokens": True}
    if config.stop:
        args["stop"] = list(config.stop)
    if config.seed is not None:
        args["seed"] = config.seed
    return args


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return vllm


class VLLMLLM(LLM):
    """A chat model run by vLLM in this process. `adapters` are served by name; `adapter` picks the default one."""

    engine = "vllm"
    declared_capabilities = ENGINE_CAPABILITIES["vllm"]
    batch_sensitive = True  # continuous batches are fp16/bf16 sums over a changing batch

    def __init__(
        self,
        path: str,
        adapter: str | None = None,
        adapters: list[str] | dict[str, str] | None = None,
        name: str | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        seed: int = 0,
    ):
        vllm = _import_vllm()
        from transformers import AutoTokenizer

        given = dict(adapters) if isinstance(adapters, dict) else {_adapter_name(p): p for p in (adapters or [])}
        if adapter and adapter not in given.values():
            given = {_adapter_name(adapter): adapter, **given}
        self.adapters = {a.name: a for a in lora_requests(given)}
        self.default_adapter = _adapter_name(adapter) if adapter else None
        self.path, self.adapter, self.merged = path, adapter, False
        self.name = name or path
        self.dtype = dtype or "auto"
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        args = engine_args(path, list(self.adapters.values()), dtype, max_length, gpu_memory_utilization,
                           tensor_parallel_size, seed)
        self.llm = vllm.LLM(**args)
        self.max_length = int(max_length or self.llm.llm_engine.model_config.max_model_len)
        self._vllm = vllm
        self._lock = threading.Lock()

    def _lora(self, adapter: str | None) -> Any:
        name = adapter or self.default_adapter
        if not name:
            return None
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r}; served: {', '.join(self.adapters) or 'none'}")
        a = self.adapters[name]
        from vllm.lora.request import LoRARequest

        return LoRARequest(a.name, a.lora_int_id, a.path)

    def render(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _prompt(self, messages: list[Message], room: int) -> dict[str, Any]:
        ids = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
        return {"prompt_token_ids": ids[-max(16, self.max_length - room):]}

    def generate(
        self, conversations: list[list[Message]], config: GenerationConfig | None = None, batch_size: int = 8,
        adapter: str | None = None,
    ) -> list[Generation]:
        """All conversations go to vLLM at once (its scheduler batches them); `adapter` names the LoRA to use."""
        config = config or GenerationConfig()
        if not conversations:
            return []
        prompts = [self._prompt(c, config.max_new_tokens) for c in conversations]
        params = self._vllm.SamplingParams(**sampling_args(config))
        t0 = time.perf_counter()
        with self._lock:
            outputs = self.llm.generate(prompts, params, lora_request=self._lora(adapter), use_tqdm=False)
        seconds = (time.perf_counter() - t0) / len(prompts)
        out = []
        for prompt, result in zip(prompts, outputs, strict=True):
            completion = result.outputs[0]
            gen = Generation(text=completion.text.strip(), prompt_tokens=len(prompt["prompt_token_ids"]),
                             completion_tokens=len(completion.token_ids), seconds=seconds,
                             finish_reason="length" if completion.finish_reason == "length" else "stop")
            self.usage.add(gen)
            out.append(gen)
        return out

    def loglikelihood(self, requests: list[tuple[list[Message], str]], batch_size: int = 8,
                      adapter: str | None = None) -> list[float]:
        """vLLM's prompt log-probabilities of the continuation tokens (one generated token, discarded)."""
        if not requests:
            return []
        rows = []
        for messages, continuation in requests:
            prompt = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            rows.append((prompt[-max(1, self.max_length - len(cont) - 1):] + cont, len(cont)))
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        scored = [i for i, (_, c) in enumerate(rows) if c > 0]
        out = [0.0] * len(rows)
        if scored:
            with self._lock:
                results = self.llm.generate([{"prompt_token_ids": rows[i][0]} for i in scored], params,
                                            lora_request=self._lora(adapter), use_tqdm=False)
            for i, result in zip(scored, results, strict=True):
                ids, c = rows[i]
                logprobs = result.prompt_logprobs or []
                out[i] = float(sum(logprobs[j][ids[j]].logprob for j in range(len(ids) - c, len(ids))))
        return out
