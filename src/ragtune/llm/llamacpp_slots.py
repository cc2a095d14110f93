"""Continuous batching for the llama.cpp engine: parallel sequence slots in one llama.cpp context, as llama.cpp's
own server runs them (`--parallel N`).

Why: llama-cpp-python's `Llama` decodes one sequence, so a server over it answers one request at a time and eight
clients wait in line. llama.cpp itself decodes many sequences in one `llama_decode` call: each token of the batch
carries the id of the sequence (slot) it belongs to, and each slot has its own key/value cache. `SlotEngine` drives
that loop through llama-cpp-python's C bindings:

- continuous batching: a request takes a free slot as soon as one is free (no waiting for a batch to finish); each
  step decodes one new token for every generating slot, plus a chunk of the prompt being read (chunked prefill,
  `prefill_chunk` tokens a step);
- capped prefill: at most `prefill_slots` slots read their prompt at once (default 1), and a request waits in a
  FIFO queue (never overtaken) until a slot is free and the cap has room. Why: on a CPU a step costs about its token
  count, so a step that reads every new slot's prompt makes each generating slot's next token wait for all of them;
  at 32 clients on 32 slots every answer stalled behind 32 prompts and one request finished in 40 s. With the cap a
  generating slot waits for one chunk at most, prompts are read one after the other at the same total speed, and
  requests start in arrival order;
- a request takes the lowest free slot and the batch is laid out in slot order: with a cache stream per slot,
  llama.cpp splits a batch into passes over runs of consecutive slot ids, so the generating slots stay one pass;
- a slot keeps the tokens it last held: a new prompt sharing a prefix with them (the system prompt) reuses that part
  of its key/value cache;
- several LoRA adapters over one copy of the base weights, chosen per request by name: llama.cpp applies adapters
  to the whole context, so a step decodes the slots of one adapter and the steps take turns between adapters;
- streaming (`on_text` per settled piece), stop strings, cancel (a set `cancel` event, or the job's deadline) at the
  next step, queued or running, and the same submit / health interface as `ragtune.llm.server.Batcher`, so
  `ragtune serve` uses either.

Greedy answers are those of `LlamaCppLLM.generate` up to the rounding of batched kernels (a batch of sequences is
multiplied together, in another order than one sequence alone). Prompts are rendered and tokenised, and answers
decoded, by the model's Hugging Face tokenizer, as in `LlamaCppLLM`.
"""

from __future__ import annotations

import atexit
import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ragtune.llm.base import Generation, GenerationConfig, Message
from ragtune.llm.llamacpp_backend import LlamaCppLLM, _truncate_and_hold, resolve_gguf
from ragtune.llm.server import GivesUpJobs, stall_health

BASE = ""  # the adapter name of the base weights (no LoRA)
# Measured on the 2-core CPU with the bundled model and ~900-token RAG prompts (8 clients, 32 new tokens): 2, 4 and
# 8 slots answer 14, 15 and 10 requests in 40 CPU-seconds (one at a time: 10 in 30); 4 starts answers sooner than 2.
DEFAULT_SLOTS = 4
DEFAULT_PREFILL_CHUNK = 256  # prompt tokens read per step (128 / 512: 13 / 14 requests in the same run)


@dataclass
class _Job:
    ids: list[int]
    config: GenerationConfig
    adapter: str
    future: Future
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event | None = None
    deadline: float | None = None
    queued: float = 0.0
    room: int = 256


@dataclass
class _Slot:
    seq: int
    job: _Job | None = None
    cached: list[int] = field(default_factory=list)  # the tokens whose keys/values this slot's cache holds
    adapter: str = BASE  # the adapter those keys/values were computed under
    pending: list[int] = field(default_factory=list)  # prompt tokens not read yet (then: the last sampled token)
    reading: bool = False  # still reading its prompt (prefill); counts against the prefill cap
    tokens: list[int] = field(default_factory=list)  # the answer so far
    sent: str = ""
    started: float = 0.0
    rng: Any = None


class SlotEngine(GivesUpJobs):
    """`slots` sequences decoded together by llama.cpp for `llm`'s weights; `adapters` maps a request's model name
    to a LoRA (a GGUF LoRA file or a PEFT adapter folder, converted once); the base weights are named `base_name`.
    At most `prefill_slots` slots read their prompt at once, `prefill_chunk` prompt tokens a step; `n_batch` bounds
    the tokens of one step (generating slots + prompt chunk)."""

    def __init__(self, llm: LlamaCppLLM, slots: int = DEFAULT_SLOTS, slot_ctx: int = 2048, n_batch: int = 512,
                 adapters: dict[str, str] | None = None, base_name: str | None = None,
                 timeout_s: float | None = None, lora_scale: float = 1.0, prefill_slots: int = 1,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        import numpy as np

        if slots < 1 or prefill_slots < 1 or prefill_chunk < 1:
            raise ValueError(f"slots ({slots}), prefill_slots ({prefill_slots}) and prefill_chunk ({prefill_chunk}) "
                             "must be at least 1")
        llama_cpp = llm._llama_cpp
        self._lc, self._np = llama_cpp, np
        self.llm = llm
        self.tokenizer = llm.tokenizer
        self.slots_n, self.slot_ctx = int(slots), int(slot_ctx)
        self.n_batch = max(int(n_batch), self.slots_n + 1)  # every generating slot and one prompt token fit a step
        self.prefill_slots = min(int(prefill_slots), self.slots_n)
        self.prefill_chunk = min(int(prefill_chunk), self.n_batch)
        self.timeout_s = timeout_s
        self.base_name = base_name or llm.name
        self._model = llm.llama.model
        self._vocab = llm.llama.n_vocab()
        self._eos = set(llm._eos)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.slots_n * self.slot_ctx
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = self.slots_n
        params.kv_unified = False  # a cache stream per slot: no attention across unrelated prompts
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if getattr(llm, "flash_attn", True)
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)  # as the one-sequence engine
        threads = llm.llama.n_threads if hasattr(llm.llama, "n_threads") else 1
        params.n_threads = params.n_threads_batch = int(threads)
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if ctx is None:
            raise RuntimeError(f"llama.cpp could not make a context of {self.slots_n} slots x {self.slot_ctx} tokens")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._loras: dict[str, Any] = {}
        self._scale = float(lora_scale)
        for name, path in (adapters or {}).items():
            if not name or name == self.base_name:
                raise ValueError(f"adapter name {name!r} is empty or the base model's name")
            lora = resolve_gguf(llm.model.reference, path, llm.llama_cpp_dir, llm.gguf_quant).lora
            handle = llama_cpp.llama_adapter_lora_init(self._model, str(lora).encode())
            if not handle:
                raise RuntimeError(f"llama.cpp could not load the LoRA {lora} (adapter {name!r})")
            self._loras[name] = handle
        self._active_adapter: str | None = None
        self.slots = [_Slot(i) for i in range(self.slots_n)]
        self._queue: deque[_Job] = deque()  # FIFO: a request is admitted only after every earlier one
        self._wake = threading.Condition()
        self.lock = threading.Lock()  # API parity with Batcher (a loglikelihood route holds it)
        self.batches = self.cancelled = self.timed_out = 0
        self.steps = self.tokens_out = self.most_active = self.most_reading = self.admitted = 0
        self.busy_since: float | None = None
        self.last_progress = time.monotonic()
        self._turn = 0
        self._closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ragtune-llamacpp-slots", daemon=True)
        self.thread.start()
        atexit.register(self.close)  # before the model is freed (atexit runs last-registered first)

    # -- the Batcher interface ---------------------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        """The names a request may ask for: the base, then each adapter."""
        return [self.base_name, *self._loras]

    def submit(self, messages: list[Message], config: GenerationConfig,
               on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
               timeout_s: float | None = None, model: str | None = None) -> Future:
        """Queue one conversation for the model (or adapter) named `model` (None: the base); see `Batcher.submit`."""
        adapter = BASE if model in (None, self.base_name) else model
        if adapter and adapter not in self._loras:
            raise KeyError(f"no model {model!r}; served: {', '.join(self.models)}")
        room = max(1, min(config.max_new_tokens, self.slot_ctx - 16))
        ids = self.tokenizer(self.llm.render(messages), add_special_tokens=False)["input_ids"]
        ids = ids[-max(16, self.slot_ctx - room):]  # keep the end: the question and the opened assistant turn
        future: Future = Future()
        now, timeout = time.monotonic(), self.timeout_s if timeout_s is None else timeout_s
        job = _Job(ids, config, adapter, future, on_text, cancel, now + timeout if timeout else None, now, room)
        with self._wake:
            self._queue.append(job)
            self._wake.notify()
        return future

    def warm(self, config: GenerationConfig) -> None:
        """Nothing to prepare: stop strings are matched on the decoded text."""

    def health(self, stall_after_s: float) -> dict[str, Any]:
        return stall_health(self.busy_since, self.last_progress, len(self._queue), stall_after_s,
                            "a decoding step has been running")

    def stats(self) -> dict[str, int]:
        return {"slots": self.slots_n, "prefill_slots": self.prefill_slots, "steps": self.steps,
                "tokens": self.tokens_out, "admitted": self.admitted, "most_active": self.most_active,
                "most_reading": self.most_reading, "cancelled": self.cancelled, "timed_out": self.timed_out}

    def close(self) -> None:
        """Stop the loop and free the context (the model belongs to `llm`)."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._wake:
            self._wake.notify()
        self.thread.join(timeout=30)
        if self.thread.is_alive():
            return  # a decode still running: leave the memory to the process exit
        self._lc.llama_batch_free(self._batch)
        self._lc.llama_free(self._ctx)
        for handle in self._loras.values():
            self._lc.llama_adapter_lora_free(handle)
        self._loras.clear()

    # -- the loop ----------------------------------------------------------------------------------------------------
    def _admit(self, job: _Job, slot: _Slot) -> None:
        keep = _shared(slot.cached, job.ids) if slot.adapter == job.adapter else 0
        keep = min(keep, len(job.ids) - 1)  # read at least the last prompt token: its logits give the first token
        self._lc.llama_memory_seq_rm(self._mem, slot.seq, keep, -1)
        slot.job, slot.adapter, slot.cached = job, job.adapter, slot.cached[:keep]
        slot.pending, slot.reading = job.ids[keep:], True
        slot.tokens, slot.sent, slot.started = [], "", time.perf_counter()
        slot.rng = self._np.random.default_rng(job.config.seed) if job.config.temperature > 0 else None
        self.admitted += 1

    def _take_jobs(self) -> None:
        """Settle the queued jobs given up by now, then admit from the head of the queue while a slot is free and the
        prefill cap has room (the lowest free slot: the running ones stay consecutive). Waits a little when idle."""
        with self._wake:
            if not self._queue and not any(s.job for s in self.slots) and not self._closed.is_set():
                self._wake.wait(timeout=0.2)
            kept = [job for job in self._queue if not self._given_up(job)]
            if len(kept) < len(self._queue):
                self._queue = deque(kept)
            reading = sum(1 for s in self.slots if s.job is not None and s.reading)
            free = (s for s in self.slots if s.job is None)  # in slot order
            while self._queue and reading < self.prefill_slots:
                slot = next(free, None)
                if slot is None:
                    break
                self._admit(self._queue.popleft(), slot)
                reading += 1
                self.last_progress = time.monotonic()

    def _use_adapter(self, name: str) -> None:
        if name == self._active_adapter:
            return
        lc = self._lc
        if name:
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self._loras[name])
            scales = (ctypes.c_float * 1)(self._scale)
            lc.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
        else:
            lc.llama_set_adapters_lora(self._ctx, None, 0, None)
        self._active_adapter = name

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._take_jobs()
                for slot in self.slots:  # cancelled or expired since the last step
                    if slot.job is not None and self._given_up(slot.job):
                        slot.job = None
                active = [s for s in self.slots if s.job is not None]
                if active:
                    self._step(active)
            except Exception as exc:  # noqa: BLE001 - every waiting client must get an answer
                for slot in self.slots:
                    if slot.job is not None and not slot.job.future.done():
                        slot.job.future.set_exception(exc)
                    slot.job, slot.cached = None, []
                    self._lc.llama_memory_seq_rm(self._mem, slot.seq, 0, -1)

    def _plan(self, group: list[_Slot]) -> list[tuple[_Slot, list[int]]]:
        """The tokens each slot of `group` puts in this step, in slot order: the last sampled token of every
        generating slot, then up to `prefill_chunk` prompt tokens of the reading slots, the oldest request first."""
        reading = sorted((s for s in group if s.reading), key=lambda s: s.job.queued if s.job else 0.0)
        plan = {s.seq: (s, s.pending[:1]) for s in group if not s.reading}
        room = min(self.prefill_chunk, self.n_batch - len(plan))
        for slot in reading:
            if room <= 0:
                break
            plan[slot.seq] = (slot, slot.pending[:room])
            room -= len(plan[slot.seq][1])
        return [plan[seq] for seq in sorted(plan)]

    def _step(self, active: list[_Slot]) -> None:
        adapters = list(dict.fromkeys(s.job.adapter for s in active if s.job))
        adapter = adapters[self._turn % len(adapters)]
        self._turn += 1
        self.most_active = max(self.most_active, len(active))
        self.most_reading = max(self.most_reading, sum(1 for s in active if s.reading))
        batch, n, readers = self._batch, 0, []
        for slot, take in self._plan([s for s in active if s.job and s.job.adapter == adapter]):
            for j, token in enumerate(take):
                batch.token[n] = token
                batch.pos[n] = len(slot.cached) + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq
                batch.logits[n] = 0
                n += 1
            slot.cached += take
            slot.pending = slot.pending[len(take):]
            if not slot.pending:  # the whole prompt (or the last token) is in: its logits give the next token
                slot.reading = False
                batch.logits[n - 1] = 1
                readers.append((slot, n - 1))
        batch.n_tokens = n
        self._use_adapter(adapter)
        self.busy_since = time.monotonic()
        try:
            code = self._lc.llama_decode(self._ctx, batch)
        finally:
            self.busy_since, self.last_progress = None, time.monotonic()
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} (slots full? {self.slot_ctx} tokens per slot)")
        self.steps += 1
        self.batches += 1
        for slot, index in readers:
            self._advance(slot, index)

    def _advance(self, slot: _Slot, index: int) -> None:
        """Sample the next token of `slot` from row `index` of the step's logits, stream it, and finish the job when
        it ends (end token, stop string, max tokens, cancel)."""
        np, job = self._np, slot.job
        assert job is not None
        logits = np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self._ctx, index), shape=(self._vocab,))
        token = _sample(logits, job.config, slot.rng)
        finish = None
        if token in self._eos:
            finish = "stop"
        else:
            slot.tokens.append(token)
            self.tokens_out += 1
            text, stopped = _truncate_and_hold(self.tokenizer.decode(slot.tokens, skip_special_tokens=True),
                                               job.config.stop, final=False)
            if job.on_text is not None and len(text) > len(slot.sent) and text.startswith(slot.sent):
                piece, slot.sent = text[len(slot.sent):], text
                _call(job.on_text, piece)
            if stopped:
                finish = "stop"
            elif len(slot.tokens) >= job.room:
                finish = "length"
            else:
                slot.pending = [token]
        if finish is None:
            return  # the loop checks cancel and the deadline before the next step
        text, _ = _truncate_and_hold(self.tokenizer.decode(slot.tokens, skip_special_tokens=True), job.config.stop,
                                     True)
        if job.on_text is not None and len(text) > len(slot.sent) and text.startswith(slot.sent):
            _call(job.on_text, text[len(slot.sent):])
        gen = Generation(text=text, prompt_tokens=len(job.ids), completion_tokens=len(slot.tokens),
                         seconds=time.perf_counter() - slot.started, finish_reason=finish)
        self.llm.usage.add(gen)
        slot.job = None
        if not job.future.done():
            job.future.set_result(gen)


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _sample(logits: Any, config: GenerationConfig, rng: Any) -> int:
    """Greedy (argmax) unless `config.temperature > 0`: then temperature and nucleus (top_p) sampling."""
    import numpy as np

    if config.temperature <= 0 or rng is None:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / config.temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if config.top_p < 1.0:
        order = np.argsort(-probs)
        cum = np.cumsum(probs[order])
        cut = int(np.searchsorted(cum, config.top_p)) + 1
        keep = order[: max(1, cut)]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))


def _call(listener: Callable[[str], None], piece: str) -> None:
    try:
        listener(piece)
    except Exception:  # noqa: BLE001 - a gone client must not fail the other slots
        import logging

        logging.getLogger("ragtune.llm").exception("stream listener failed")
