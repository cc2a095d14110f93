"""Local chat models through llama.cpp (llama-cpp-python): the GGUF file itself, quantised kernels, streaming, cancel.

Why a llama.cpp engine: it runs GGUF files with llama.cpp's own CPU kernels, and it is what users deploy to (llama.cpp
server, Ollama, LM Studio). Prompts are rendered and tokenised with the model's Hugging Face tokenizer and chat
template and the answer tokens are decoded with it, so the tokens in and the text out are those of the transformers
backend; only the arithmetic differs. That difference is small at f16 and large with 4-bit weights (llama.cpp rounds
activations to 8 bits for them), hence the bundled 4-bit model runs re-encoded at f16 by default.

- `ref`: None / a bundled name (the bundled 4-bit GGUF, re-encoded once at f16 unless `gguf_quant="native"`: see
  `resolve_gguf`), a `.gguf` file, or a Hugging Face folder / hub id (converted once to an f16 GGUF with llama.cpp's
  converter); conversions are cached under `$RAGTUNE_CACHE/gguf/`.
- `adapter`: a GGUF LoRA file, or a PEFT adapter folder (converted once with llama.cpp's `convert_lora_to_gguf.py`,
  cached): applied at load time on the same base weights, so a tuned system differs from its base by the adapter only.
- one sequence at a time (llama-cpp-python's `Llama` has one context): conversations of a batch run in turn, each
  reusing the key/value cache of the longest prompt prefix it shares with the previous one.
- `loglikelihood`: the continuation is fed token by token after the prompt and each next-token distribution is read
  from the last position's logits (no `logits_all`, whose n_ctx x vocabulary buffer costs gigabytes).

Install with `pip install llama-cpp-python` (or `pip install ragtune[llamacpp]`); converting a folder or a PEFT
adapter also needs llama.cpp's converters (see `ragtune.llm.gguf`).
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.llm.base import LLM, ChatTemplatePrompts, Generation, GenerationConfig, Message, OnText
from ragtune.llm.capabilities import ENGINE_CAPABILITIES

INSTALL_HINT = ("the llamacpp engine needs llama-cpp-python: `pip install llama-cpp-python` (or ragtune with its "
                "llamacpp extra)")

_MODELS: dict[tuple[str, str, int, int], Any] = {}
_MODELS_LOCK = threading.Lock()


@dataclass(frozen=True)
class GGUFModel:
    """What the engine loads: the GGUF weights, an optional GGUF LoRA, and where the HF tokenizer comes from."""

    reference: str
    gguf: Path
    tokenizer_dir: Path
    tokenizer_gguf: str | None = None  # a file name inside tokenizer_dir when the tokenizer is read from a GGUF
    lora: Path | None = None
    tokenizer_cache: Path | None = None  # where a tokenizer read from a GGUF is saved, so later loads skip the read


def _fingerprint(*paths: str | Path) -> str:
    from ragtune.hashing import short_id

    parts: list[str] = []
    for p in paths:
        path = Path(p)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        for f in files:
            stat = f.stat()
            parts += [str(f.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    return short_id(*parts)


# --dtype names (and their aliases) -> the GGUF type llama.cpp runs a re-encoded / converted model at
_GGUF_TYPES = {"float32": "f32", "fp32": "f32", "float16": "f16", "fp16": "f16", "bfloat16": "bf16", "bf16": "bf16"}


def gguf_type_for(dtype: str | None, n_gpu_layers: int = 0) -> str:
    """The GGUF type llama.cpp runs the bundled model (re-encoded) or a converted Hugging Face folder at, for the
    `--dtype` every engine takes, so one flag means the same everywhere:

    - None: f16, the exact default (the bundled 4-bit values are exact in f16; answers and log-likelihoods are the
      transformers engine's in fp32 to within 0.05 of a logit);
    - "auto": the fastest at equal quality, as for transformers: bf16 on a CPU with native bf16 (AVX512-BF16 / AMX),
      whose bf16 dot products llama.cpp runs natively (measured on one EPYC core, bundled SmolLM2, 1,000-token
      prompt: prefill 262 tokens/s at bf16 against 188 at f16, decoding 23.7 against 24.8 ms a token; greedy answers
      on 27 of 30 RAG prompts those of transformers in fp32, where transformers' own bf16 keeps 21:
      benchmarks/llamacpp_types.py); f16 on a GPU or a CPU without it;
    - "float32" / "float16" / "bfloat16" (and fp32 / fp16 / bf16): that type.
    A `.gguf` file given as the model always runs as it is."""
    if dtype is None:
        return "f16"
    if dtype == "auto":
        from ragtune.llm.hardware import cpu_has_fast_bf16

        return "bf16" if n_gpu_layers == 0 and cpu_has_fast_bf16() else "f16"
    try:
        return _GGUF_TYPES[dtype]
    except KeyError:
        raise ValueError(f"the llamacpp engine runs dtype auto, {', '.join(sorted(_GGUF_TYPES))}; not {dtype!r} "
                         "(a quantised GGUF: pass the .gguf file as the model)") from None


def resolve_gguf(ref: str | None = None, adapter: str | None = None, llama_cpp_dir: str | None = None,
                 gguf_quant: str = "f16") -> GGUFModel:
    """The GGUF file (+ GGUF LoRA) for a model reference and an optional adapter, converting (once) what is not GGUF.

    The bundled model ships as a 4-bit (q4_1) GGUF; `gguf_quant` says how llama.cpp runs it: "f16" (default) the same
    weights re-encoded once at f16 by llama.cpp's quantiser (`ragtune.llm.gguf.reencode`), so that its answers and
    log-likelihoods are those of the transformers engine (which runs the de-quantised weights); "native" the 4-bit
    file as shipped (smaller, faster, but answers part from transformers' on near-ties: see `reencode`).
    A `.gguf` reference is always run as it is."""
    from ragtune.llm import gguf as convert
    from ragtune.models import DEFAULT_GENERATOR, bundled_smollm2_gguf, cache_dir, default_generator, resolve_generator

    ref = ref or default_generator()
    if ref.startswith("openai:"):
        raise ValueError("the llamacpp engine runs local models; an openai: reference is served by its own server")
    adapter_path = Path(adapter).expanduser() if adapter else None
    # a wrong adapter path fails here, before minutes of converting the base
    if adapter_path is not None and not (adapter_path.suffix == ".gguf" and adapter_path.is_file()) \
            and not (adapter_path / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter}: neither a GGUF LoRA file nor a PEFT adapter folder (adapter_config.json)")
    path = Path(ref).expanduser()
    hf_dir: Path | None = None  # the HF folder of the base (needed to convert a PEFT adapter)
    if ref.strip().lower().replace("_", "-") in {DEFAULT_GENERATOR, "default", "smollm2", "smollm2-135m"}:
        weights = bundled_smollm2_gguf()
        run = weights
        if gguf_quant != "native":
            run = cache_dir() / "gguf" / f"{_fingerprint(weights)}-{gguf_quant}.gguf"
            if not run.exists():
                convert.reencode(weights, run, gguf_quant)
        saved = cache_dir() / "gguf" / f"tokenizer-{_fingerprint(weights)}"  # reading it from the GGUF: ~10-50 s
        model = (GGUFModel(ref, run, saved) if (saved / "tokenizer_config.json").exists()
                 else GGUFModel(ref, run, weights.parent, weights.name, tokenizer_cache=saved))
    elif path.suffix == ".gguf" and path.is_file():
        folder = path.resolve().parent  # `ragtune export-model` puts the HF tokenizer next to the GGUF: use it
        own = (folder / "tokenizer_config.json").exists()
        model = GGUFModel(ref, path.resolve(), folder, None if own else path.name)
    else:
        hf_dir = Path(resolve_generator(ref).path)
        if not hf_dir.is_dir():
            raise ValueError(f"the llamacpp engine needs a local model folder or a .gguf file; {ref!r} is a hub id "
                             "that is not downloaded (download it first, or pass a .gguf file)")
        outtype = gguf_quant if gguf_quant in convert.CONVERTER_OUTTYPES else "f16"
        target = cache_dir() / "gguf" / f"{_fingerprint(hf_dir)}-{outtype}.gguf"
        if not target.exists():
            convert.convert_hf(hf_dir, target, outtype, llama_cpp_dir)
        model = GGUFModel(ref, target, hf_dir)
    if adapter_path is None:
        return model
    if adapter_path.suffix == ".gguf" and adapter_path.is_file():
        return GGUFModel(model.reference, model.gguf, model.tokenizer_dir, model.tokenizer_gguf, adapter_path)
    base_hf = hf_dir or Path(resolve_generator(ref).path)  # the GGUF's HF folder: config for the LoRA converter
    lora = cache_dir() / "gguf" / f"lora-{_fingerprint(adapter_path, model.gguf)}-f16.gguf"
    if not lora.exists():
        convert.convert_lora(adapter_path, base_hf, lora, llama_cpp_dir)
    tokenizer_dir = adapter_path if (adapter_path / "tokenizer_config.json").exists() else model.tokenizer_dir
    tokenizer_gguf = None if tokenizer_dir == adapter_path else model.tokenizer_gguf
    return GGUFModel(model.reference, model.gguf, tokenizer_dir, tokenizer_gguf, lora,
                     model.tokenizer_cache if tokenizer_gguf else None)


def _gguf_chat_template(path: Path) -> str | None:
    """The chat template stored in a GGUF's metadata (transformers' GGUF tokenizer reader does not always keep it)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else None


def _save_tokenizer(tokenizer: Any, target: Path) -> None:
    """Save a tokenizer read from a GGUF (written aside, then renamed: a concurrent reader sees all of it or none)."""
    import shutil
    import tempfile

    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:  # another process saved it first, or the cache is read-only: the GGUF stays the source
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _threads() -> int:
    value = os.environ.get("OMP_NUM_THREADS")
    return max(1, int(value)) if value and value.isdigit() else max(1, os.cpu_count() or 1)


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return llama_cpp


def _truncate_and_hold(text: str, stop: list[str], final: bool) -> tuple[str, bool]:
    """The text of a growing answer that can be shown: cut at a stop string; while running, without a tail that may
    begin one (the transformers backend's rule, so both stream the same pieces)."""
    from ragtune.llm.transformers_backend import _held_back, _truncate_at_stop

    text, stopped = _truncate_at_stop(text, stop)
    return (text.strip() if final or stopped else _held_back(text.lstrip(), stop)), stopped


class LlamaCppLLM(ChatTemplatePrompts, LLM):
    """A chat model run by llama.cpp. Build it with `load_llm(ref, adapter, engine="llamacpp")`."""

    engine = "llamacpp"
    declared_capabilities = ENGINE_CAPABILITIES["llamacpp"]
    supports_cancel = True
    batch_sensitive = False  # one sequence at a time: a batch's composition never changes an answer

    def __init__(
        self,
        ref: str | None = None,
        adapter: str | None = None,
        name: str | None = None,
        max_length: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        lora_scale: float = 1.0,
        llama_cpp_dir: str | None = None,
        seed: int = 0,
        gguf_quant: str = "f16",
        flash_attn: bool = True,
    ):
        llama_cpp = _import_llama_cpp()
        from transformers import AutoTokenizer

        from ragtune.models import quiet_transformers

        quiet_transformers()
        self.model = resolve_gguf(ref, adapter, llama_cpp_dir, gguf_quant)
        self.gguf_quant, self.llama_cpp_dir = gguf_quant, llama_cpp_dir  # how further adapters are resolved
        self.adapter = adapter
        self.name = name or self.model.reference
        self.path = str(self.model.gguf)
        # what runs: a .gguf given as the model as it is, else the type it was re-encoded / converted to
        self.dtype = "gguf" if str(ref or "").endswith(".gguf") else f"gguf-{gguf_quant}"
        self.merged = False
        extra = {"gguf_file": self.model.tokenizer_gguf} if self.model.tokenizer_gguf else {}
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(self.model.tokenizer_dir), **extra)
        if self.tokenizer.chat_template is None and self.model.tokenizer_gguf:
            self.tokenizer.chat_template = _gguf_chat_template(self.model.tokenizer_dir / self.model.tokenizer_gguf)
        if self.model.tokenizer_gguf and self.model.tokenizer_cache is not None:
            _save_tokenizer(self.tokenizer, self.model.tokenizer_cache)
        n_ctx = int(max_length or 4096)
        threads = n_threads or _threads()
        # flash attention: llama.cpp's fused attention kernel, on by default (llama-cpp-python's Llama turns it off
        # unless asked): on one EPYC core a 1,000-token prompt of the bundled model reads at 352 tokens/s with it
        # against 262 without (bf16; f16 238 / 188); at f16 it changes none of 30 RAG answers
        # (benchmarks/llamacpp_types.py)
        self.flash_attn = bool(flash_attn)
        key = (f"{self.model.gguf}|{self.model.lora or ''}|{lora_scale}|{self.flash_attn}", str(n_gpu_layers), n_ctx,
               threads)
        with _MODELS_LOCK:
            llama = _MODELS.get(key)
            if llama is None:
                llama = llama_cpp.Llama(
                    model_path=str(self.model.gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                    n_gpu_layers=n_gpu_layers, lora_path=str(self.model.lora) if self.model.lora else None,
                    lora_scale=lora_scale, seed=seed, verbose=False, logits_all=False, flash_attn=self.flash_attn,
                )
                _MODELS[key] = llama
        self.llama = llama
        self.max_length = n_ctx
        self._llama_cpp = llama_cpp
        vocab = self.tokenizer.get_vocab()  # the chat turn's end token ends an answer, as in the transformers backend
        ends = {vocab[t] for t in (self.tokenizer.eos_token, "<|im_end|>", "<|eot_id|>") if t and t in vocab}
        self._eos = ends | {int(llama.token_eos())}
        self._lock = threading.Lock()  # one context: one sequence at a time

    def generate(
        self, conversations: list[list[Message]], config: GenerationConfig | None = None, batch_size: int = 8,
        on_text: OnText | None = None, cancelled: Callable[[int], bool] | None = None,
    ) -> list[Generation]:
        """Greedy unless `config.temperature > 0`; `cancelled(i)` is asked after every token (then finish_reason is
        "cancelled"); `on_text(i, piece)` gets the settled new text after each token."""
        config = config or GenerationConfig()
        out = []
        for i, conv in enumerate(conversations):
            room = min(config.max_new_tokens, max(1, self.max_length - 16))
            ids = self._encode(conv, room)
            out.append(self._one(i, ids, config, room, on_text, cancelled))
        return out

    def generate_stream(
        self, conversations: list[list[Message]], on_text: OnText, config: GenerationConfig | None = None,
        batch_size: int = 8, cancelled: Callable[[int], bool] | None = None,
    ) -> list[Generation]:
        return self.generate(conversations, config, batch_size, on_text=on_text, cancelled=cancelled)

    def _one(self, i: int, ids: list[int], config: GenerationConfig, room: int, on_text: OnText | None,
             cancelled: Callable[[int], bool] | None) -> Generation:
        sampling: dict[str, Any] = {"temp": 0.0, "repeat_penalty": 1.0}
        if config.temperature > 0:
            sampling = {"temp": config.temperature, "top_p": config.top_p, "top_k": 0, "min_p": 0.0,
                        "typical_p": 1.0, "repeat_penalty": 1.0}
        tokens: list[int] = []
        sent, finish = "", "length"
        t0 = time.perf_counter()
        with self._lock:
            if config.seed is not None:
                self.llama.set_seed(config.seed)
            for token in self.llama.generate(ids, reset=True, **sampling):
                if token in self._eos:
                    finish = "stop"
                    break
                tokens.append(int(token))
                text, stopped = _truncate_and_hold(self.tokenizer.decode(tokens, skip_special_tokens=True),
                                                   config.stop, final=False)
                if on_text is not None and len(text) > len(sent) and text.startswith(sent):
                    piece, sent = text[len(sent):], text
                    on_text(i, piece)
                if stopped:
                    finish = "stop"
                    break
                if cancelled is not None and cancelled(i):
                    finish = "cancelled"
                    break
                if len(tokens) >= room:
                    break
        seconds = time.perf_counter() - t0
        text, _ = _truncate_and_hold(self.tokenizer.decode(tokens, skip_special_tokens=True), config.stop, True)
        if on_text is not None and len(text) > len(sent) and text.startswith(sent):
            on_text(i, text[len(sent):])
        gen = Generation(text=text, prompt_tokens=len(ids), completion_tokens=len(tokens), seconds=seconds,
                         finish_reason=finish)
        self.usage.add(gen)
        return gen

    def _last_logprobs(self) -> Any:
        import numpy as np

        n_vocab = self.llama.n_vocab()
        ptr = self._llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
        top = logits.max()
        return logits - (top + math.log(float(np.exp(logits - top).sum())))

    def _feed(self, tokens: list[int]) -> None:
        """Evaluate `tokens` from the start, keeping the key/value cache of the prefix shared with the last call."""
        cached = self.llama.input_ids[: self.llama.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # re-evaluate at least one token: its logits are what we read
        self.llama.n_tokens = keep
        self.llama.eval(tokens[keep:])

    def loglikelihood(self, requests: list[tuple[list[Message], str]], batch_size: int = 8) -> list[float]:
        """Sum of log p(continuation tokens | rendered conversation), the continuation tokenised as in the
        transformers backend (the same ids, so the two engines score the same event)."""
        out: list[float] = []
        for messages, continuation in requests:
            prompt = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not cont:
                out.append(0.0)
                continue
            prompt = prompt[-max(1, self.max_length - len(cont)):]
            total = 0.0
            with self._lock:
                self._feed(prompt)
                for j, token in enumerate(cont):
                    total += float(self._last_logprobs()[token])
                    if j + 1 < len(cont):
                        self.llama.eval([token])
            out.append(total)
        return out

    def choice_logprobs(self, conversations: list[list[Message]], options: list[str], batch_size: int = 8
                        ) -> list[list[float]]:
        """One prompt evaluation per conversation: each option's first-token log-probability (options must differ
        in their first token, else each option is scored in full)."""
        firsts = [self.tokenizer(o, add_special_tokens=False)["input_ids"][0] for o in options]
        if len(set(firsts)) != len(firsts):
            return super().choice_logprobs(conversations, options, batch_size)
        out = []
        for conv in conversations:
            ids = self._encode(conv, 1)
            with self._lock:
                self._feed(ids)
                logprobs = self._last_logprobs()
            out.append([float(logprobs[t]) for t in firsts])
        return out


def clear_cache(close: bool = False) -> None:
    """Forget every loaded llama.cpp model (tests use it); `close` also frees them (only when nothing uses them)."""
    with _MODELS_LOCK:
        models = list(_MODELS.values())
        _MODELS.clear()
    for llama in models if close else ():
        llama.close()


# Free the models before the interpreter tears llama_cpp's module down: a `Llama.__del__` that runs after that
# prints "TypeError: 'NoneType' object is not callable" on every exit.
atexit.register(clear_cache, close=True)
