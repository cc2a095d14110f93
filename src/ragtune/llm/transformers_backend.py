"""Local causal LMs through transformers: batched chat generation and continuation log-likelihoods.

Batches are left-padded (a decoder-only model continues from the last position, so padding must sit on the left) and
sorted by length so one long prompt does not make every other row pay for its padding. Loaded models are cached per
process: loading costs seconds, and synthesis, evaluation and retriever training all ask for the same model again.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ragtune.llm.base import LLM, Generation, GenerationConfig, Message, OnText
from ragtune.llm.cpu_precision import fast_fp32_prefill, mixed_bf16
from ragtune.llm.cpu_share import ThreadGovernor
from ragtune.llm.hardware import cpu_has_fast_bf16
from ragtune.llm.kv_cache import cache_kwarg, growing_cache

log = logging.getLogger("ragtune.llm")

_CACHE: dict[tuple[str, str | None, str, str, bool, str, bool], tuple[Any, Any]] = {}
_CACHE_LOCK = threading.Lock()


def _pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


_DTYPES = {
    "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "mixed-bf16": "mixed-bf16", "mixed": "mixed-bf16",
}
# bf16 weights and matmuls inside fp32 activations (ragtune.llm.cpu_precision): loads in fp32, then converts
MIXED = "mixed-bf16"


def resolve_dtype(dtype: str | None, device: str | None = None) -> str:
    """The dtype a local model will run in, by name ("float32" / "bfloat16" / "float16"), without loading anything.

    - `None`: the exact default, fp32 on CPU (log-likelihood scoring for RA-DIT and LLM rerankers wants it; bf16
      rounding moves a log-prob sum by more than the 0.01 temperature tolerates), bf16/fp16 on CUDA;
    - `"auto"`: the fastest at equal answer quality: bf16 on a CPU with native bf16 (AVX512-BF16 / AMX: 2.69x the
      generation speed of fp32 as eval ran it before on this project's EPYC, F1 -0.47 on 100 HotpotQA questions,
      see benchmarks/eval_throughput.py), fp32 on a CPU that would emulate bf16 (slower than fp32), bf16/fp16 on
      CUDA;
    - `"mixed-bf16"` (`"mixed"`): bf16 linear weights inside fp32 activations (1.95x, F1 -0.1, 65/100 answers as
      fp32's), see ragtune.llm.cpu_precision.
    Evaluation and serving use `auto`; answers differ slightly from fp32's, so callers that cache answers key them
    by this resolved name, never by the word "auto".
    """
    device = _pick_device(device)
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            import torch

            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if dtype == "auto":
            return "bfloat16" if cpu_has_fast_bf16() else "float32"
        return "float32"
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, {', '.join(sorted(set(_DTYPES)))}") from None


def _pick_dtype(dtype: str | None, device: str) -> Any:
    import torch

    name = resolve_dtype(dtype, device)
    return torch.float32 if name == MIXED else getattr(torch, name)


def load_model(
    path: str,
    adapter: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    merge_adapter: bool = False,
    attn_implementation: str | None = None,
    fast_prefill: bool | None = None,
):
    """(model, tokenizer) for a resolved folder or hub id, optionally with a LoRA adapter, cached per process.

    `merge_adapter=True` folds the LoRA into the base weights (`merge_and_unload`): the same function, but one matmul
    per linear layer instead of three, which is what inference wants (an unmerged all-linear LoRA costs SmolLM2 on CPU
    about a third more time per token). The merge runs in fp32 and the merged weights are cast once to `dtype`, so a
    bf16 model is not rounded twice. Training and adapter hot-swap keep the unmerged `PeftModel` (the default).
    `attn_implementation` ("sdpa" / "eager") is passed to `from_pretrained`; None is transformers' default (sdpa).
    dtype `mixed-bf16` loads fp32 and then gives every linear layer bf16 weights inside fp32 activations;
    `fast_prefill` (default: on for fp32 on a CPU with native bf16) runs prompt passes in oneDNN's fp32-grade bf16
    math mode (see ragtune.llm.cpu_precision for both and their measured effect on answers).
    """
    device = _pick_device(device)
    resolved = resolve_dtype(dtype, device)
    torch_dtype = _pick_dtype(dtype, device)
    merge = bool(adapter) and merge_adapter
    if fast_prefill is None:
        fast_prefill = resolved == "float32" and device == "cpu" and cpu_has_fast_bf16()
    key = (path, adapter, device, resolved, merge, attn_implementation or "", bool(fast_prefill))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ragtune.models import quiet_transformers

        quiet_transformers()
        tokenizer = (
            AutoTokenizer.from_pretrained(adapter or path)
            if adapter and _has_tokenizer(adapter)
            else AutoTokenizer.from_pretrained(path)
        )
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        extra: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
        load_dtype = torch.float32 if merge else torch_dtype
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype, **extra)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
            if merge:
                model = model.merge_and_unload().to(torch_dtype)
        model = model.to(device)
        model.eval()
        if resolved == MIXED:
            mixed_bf16(model)
        elif fast_prefill:
            fast_fp32_prefill(model)
        _CACHE[key] = (model, tokenizer)
        return model, tokenizer


def _has_tokenizer(folder: str) -> bool:
    from pathlib import Path

    return (Path(folder) / "tokenizer_config.json").exists()


def clear_cache() -> None:
    """Forget every loaded model (tests and long-running servers that swap adapters use it)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)


def _held_back(text: str, stop: list[str]) -> str:
    """The part of a growing answer that can be shown now: without trailing whitespace (the final answer is
    stripped), a half-decoded character (U+FFFD until its last byte arrives) or a tail that may begin a stop string."""
    text = text.rstrip().rstrip("\ufffd").rstrip()
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                text = text[:-n].rstrip()
                break
    return text


class _BatchStreamer:
    """A `generate(streamer=...)` hook that turns each step's new tokens into text pieces per row of the batch.

    transformers calls `put` once with the prompt ids, then once per decoding step with one new token per row, and
    `end` when done; its own TextStreamer handles one row only. Each row is decoded in full at every step (cheap next to
    a forward pass) and only the new, settled suffix is reported, cut and stripped exactly as `generate` cuts and strips
    the final text (first end-of-sequence token, first stop string, outer whitespace), so the pieces concatenate to
    `Generation.text`.
    """

    def __init__(self, tokenizer: Any, rows: list[int], eos_ids: list[int], stop: list[str], on_text: OnText):
        self.tokenizer, self.rows, self.eos, self.stop, self.on_text = tokenizer, rows, set(eos_ids), stop, on_text
        self.tokens: list[list[int]] = [[] for _ in rows]
        self.sent = [""] * len(rows)
        self.done = [False] * len(rows)
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for r, new in enumerate(value.reshape(len(self.rows), -1).tolist()):
            if self.done[r]:
                continue
            for t in new:
                if t in self.eos:
                    self.done[r] = True
                    break
                self.tokens[r].append(t)
            self._emit(r, final=self.done[r])

    def end(self) -> None:
        for r in range(len(self.rows)):
            self._emit(r, final=True)

    def _emit(self, r: int, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens[r], skip_special_tokens=True)
        text, stopped = _truncate_at_stop(text, self.stop)
        if stopped:
            self.done[r] = final = True
        text = text.strip() if final else _held_back(text.lstrip(), self.stop)
        if len(text) > len(self.sent[r]) and text.startswith(self.sent[r]):
            piece, self.sent[r] = text[len(self.sent[r]) :], text
            try:
                self.on_text(self.rows[r], piece)
            except Exception:  # noqa: BLE001 - one listener's failure must not stop the batch
                log.exception("on_text callback failed")


def _cancel_criteria(rows: list[int], cancelled: Callable[[int], bool]) -> Any:
    """A stopping criterion that ends the rows whose caller went away (a closed stream): transformers then pads
    those rows, and stops the whole batch once every row has ended, so an abandoned batch frees the model at once."""
    import torch
    from transformers import StoppingCriteria

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            flags = [bool(cancelled(i)) for i in rows]
            return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    return _Cancelled()


def _say_threads(text: str) -> None:
    print(f"generation: {text}", file=sys.stderr, flush=True)


def _governor_criteria(governor: ThreadGovernor) -> Any:
    """A stopping criterion that never stops anything: it lets the thread governor look at the machine's load
    between decoding steps (a batch can decode for a minute, and the load can change within it)."""
    import torch
    from transformers import StoppingCriteria

    class _Govern(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            governor.tick()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return _Govern()


class TransformersLLM(LLM):
    """A chat model run in-process. `path` is what `from_pretrained` takes (resolve it with `ragtune.models`)."""

    batch_sensitive = True  # padded batches change float sums: callers that need bit-exact reruns keep batches fixed

    def __init__(
        self,
        path: str,
        adapter: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        name: str | None = None,
        max_length: int | None = None,
        merge_adapter: bool = False,
        attn_implementation: str | None = None,
        generate_options: dict[str, Any] | None = None,
        fast_prefill: bool | None = None,
    ):
        """`merge_adapter` folds a LoRA into the weights for inference (see `load_model`); `generate_options` are
        extra `model.generate` keyword arguments (e.g. `cache_implementation="static"`), for benchmarks."""
        self.path = path
        self.adapter = adapter
        self.merged = bool(adapter) and merge_adapter
        self.model, self.tokenizer = load_model(path, adapter, device, dtype, merge_adapter, attn_implementation,
                                                fast_prefill)
        self.dtype = resolve_dtype(dtype, str(next(self.model.parameters()).device))
        self.generate_options = dict(generate_options or {})
        self._governor: ThreadGovernor | None = None  # CPU threads follow the machine's load (llm.cpu_share)
        self.device = next(self.model.parameters()).device
        self.name = name or path
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None) or 8192
        # one forward pass at a time: torch releases the GIL, and two threads on one model only fight for cores
        self._lock = threading.Lock()

    def render(self, messages: list[Message]) -> str:
        """The prompt string for a conversation, with the model's own chat template and the assistant turn opened."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode_prompts(self, conversations: list[list[Message]], room: int) -> list[list[int]]:
        limit = max(16, self.max_length - room)
        encoded = []
        for conv in conversations:
            ids = self.tokenizer(self.render(conv), add_special_tokens=False)["input_ids"]
            encoded.append(ids[-limit:])  # keep the end: the question and the opened assistant turn matter most
        return encoded

    def _pad_left(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r) :] = 1
        return ids.to(self.device), mask.to(self.device)

    supports_cancel = True

    def generate_stream(
        self, conversations: list[list[Message]], on_text: OnText, config: GenerationConfig | None = None,
        batch_size: int = 8, cancelled: Callable[[int], bool] | None = None,
    ) -> list[Generation]:
        """Token by token: `on_text(i, piece)` runs on this thread after each decoding step that settles new text for
        conversation i; the Generations are exactly those of `generate` (the streamer only reads the tokens)."""
        return self.generate(conversations, config, batch_size, on_text=on_text, cancelled=cancelled)

    def generate(
        self, conversations: list[list[Message]], config: GenerationConfig | None = None, batch_size: int = 8,
        on_text: OnText | None = None, cancelled: Callable[[int], bool] | None = None,
    ) -> list[Generation]:
        """`cancelled(i)` (optional) is asked after every decoding step; once true, conversation i stops there
        (its Generation is cut short, finish_reason "cancelled")."""
        import torch

        config = config or GenerationConfig()
        if not conversations:
            return []
        encoded = self._encode_prompts(conversations, config.max_new_tokens)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(encoded)
        eos_ids = self._eos_ids()
        for start in range(0, len(order), max(1, batch_size)):
            batch = order[start : start + max(1, batch_size)]
            ids, mask = self._pad_left([encoded[i] for i in batch])
            kwargs: dict[str, Any] = {
                **self.generate_options,
                "max_new_tokens": config.max_new_tokens,
                "pad_token_id": self.tokenizer.pad_token_id,
                "eos_token_id": eos_ids,
            }
            if config.temperature > 0:
                kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if config.stop:
                kwargs.update(stop_strings=list(config.stop), tokenizer=self.tokenizer)
            if on_text is not None:
                kwargs["streamer"] = _BatchStreamer(self.tokenizer, batch, eos_ids, list(config.stop), on_text)
            criteria = []
            if cancelled is not None:
                criteria.append(_cancel_criteria(batch, cancelled))
            if self.device.type == "cpu":
                if self._governor is None:
                    self._governor = ThreadGovernor(on_change=_say_threads)
                self._governor.tick()
                criteria.append(_governor_criteria(self._governor))
            if criteria:
                from transformers import StoppingCriteriaList

                kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
            own_cache = {"cache_implementation", "cache", "past_key_values"} & set(kwargs)
            if not own_cache and self.device.type == "cpu":
                cache = growing_cache(self.model)  # appends in place instead of copying the cache every step
                if cache is not None:
                    kwargs[cache_kwarg()] = cache
            t0 = time.perf_counter()
            with self._lock, torch.inference_mode():
                if config.seed is not None:
                    torch.manual_seed(config.seed)
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            seconds = time.perf_counter() - t0
            new = out[:, ids.shape[1] :]
            for row, i in enumerate(batch):
                tokens = new[row].tolist()
                n = len(tokens)
                hit_eos = False
                for j, t in enumerate(tokens):
                    if t in eos_ids:
                        n, hit_eos = j, True
                        break
                text = self.tokenizer.decode(tokens[:n], skip_special_tokens=True)
                text, stopped = _truncate_at_stop(text, config.stop)
                gen = Generation(
                    text=text.strip(),
                    prompt_tokens=len(encoded[i]),
                    completion_tokens=n,
                    seconds=seconds / len(batch),
                    finish_reason="cancelled" if cancelled is not None and cancelled(i) else
                    "stop" if (hit_eos or stopped or n < config.max_new_tokens) else "length",
                )
                self.usage.add(gen)
                results[i] = gen
        return [r for r in results if r is not None]

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(x) for x in source)
        return sorted(ids)

    def choice_logprobs(self, conversations: list[list[Message]], options: list[str], batch_size: int = 8
                        ) -> list[list[float]]:
        """One forward pass per conversation: the log-probability of each option's first token at the opened
        assistant turn. Options must differ in their first token (checked); "yes" / "no" do for every tokenizer."""
        import torch

        firsts = [self.tokenizer(o, add_special_tokens=False)["input_ids"][0] for o in options]
        if len(set(firsts)) != len(firsts):
            return super().choice_logprobs(conversations, options, batch_size)
        encoded = self._encode_prompts(conversations, 1)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        out: list[list[float]] = [[] for _ in encoded]
        for start in range(0, len(order), max(1, batch_size)):
            batch = order[start : start + max(1, batch_size)]
            ids, mask = self._pad_left([encoded[i] for i in batch])
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            with self._lock, torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    logits_to_keep=1).logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)[:, firsts]
            for row, i in enumerate(batch):
                out[i] = [float(x) for x in logprobs[row]]
        return out

    def loglikelihood(self, requests: list[tuple[list[Message], str]], batch_size: int = 8) -> list[float]:
        """Sum of log-probs of the continuation tokens only, batched.

        Rows are left-padded with explicit position ids, so every continuation ends at the last position and only the
        last `max continuation + 1` logits are materialised (the full vocabulary times the full prompt would not fit
        in memory for long retrieval contexts).
        """
        import torch

        if not requests:
            return []
        rows: list[tuple[list[int], int]] = []
        for messages, continuation in requests:
            prompt = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not cont:
                rows.append((prompt, 0))
                continue
            keep = max(1, self.max_length - len(cont))
            rows.append((prompt[-keep:] + cont, len(cont)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        scores = [0.0] * len(rows)
        for start in range(0, len(order), max(1, batch_size)):
            batch = [i for i in order[start : start + max(1, batch_size)] if rows[i][1] > 0]
            if not batch:
                continue
            ids, mask = self._pad_left([rows[i][0] for i in batch])
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            max_cont = max(rows[i][1] for i in batch)
            with self._lock, torch.inference_mode():
                logits = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=max_cont + 1
                ).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1, :], dim=-1)  # position j predicts token at -(max_cont - j)
            targets = ids[:, -max_cont:]
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (batch, max_cont)
            for row, i in enumerate(batch):
                c = rows[i][1]
                scores[i] = float(picked[row, max_cont - c :].sum())
        return scores
