"""Local causal LMs through CTranslate2: the same model as the transformers backend, converted once, generated faster.

CTranslate2 runs a converted Llama-family model with its own fused CPU kernels and variable-length batches (no padding
enters the computation), which is where most of a 135M model's time goes in transformers on CPU: Python overhead per
decoding step. The conversion reads the Hugging Face folder the transformers backend loads (the bundled SmolLM2 is the
GGUF de-quantised once), so fp32 answers are the transformers fp32 answers; a LoRA adapter is merged into the weights
before converting, so the tuned system runs at base-model speed. Converted folders are cached under
`$RAGTUNE_CACHE/ct2/`, keyed by the model folder, the adapter's weights and the quantisation.

Install with `pip install ctranslate2` (manylinux wheels, no compiler needed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ragtune.llm.base import LLM, ChatTemplatePrompts, Generation, GenerationConfig, Message

_GENERATORS: dict[tuple[str, str, int], Any] = {}
_LOCK = threading.Lock()


def _fingerprint(path: str, adapter: str | None) -> str:
    """What the converted weights depend on: the base folder's weights and the adapter's weights (path, size, mtime)."""
    from ragtune.hashing import short_id

    parts = [str(Path(path).resolve())]
    for folder, name in ((path, "model.safetensors"), (adapter, "adapter_model.safetensors")):
        if folder:
            f = Path(folder) / name
            stat = f.stat() if f.exists() else None
            parts += [str(f.resolve()), str(stat.st_size if stat else -1), str(stat.st_mtime_ns if stat else -1)]
    return short_id(*parts)


def convert(path: str, adapter: str | None = None, quantization: str = "float32") -> Path:
    """The CTranslate2 folder for a Hugging Face model folder (+ LoRA adapter, merged first), converted once.

    Stored as fp32 (`quantization`): CTranslate2 quantises at load time to the compute type asked for (int8, ...).
    """
    import ctranslate2

    from ragtune.models import cache_dir

    target = cache_dir() / "ct2" / f"{_fingerprint(path, adapter)}-{quantization}"
    if (target / "model.bin").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        source = path
        if adapter:
            from ragtune.llm.transformers_backend import load_model

            model, tokenizer = load_model(path, adapter, "cpu", "float32", merge_adapter=True)
            source = str(work / "merged")
            model.save_pretrained(source)
            tokenizer.save_pretrained(source)
        out = work / "ct2"
        ctranslate2.converters.TransformersConverter(source, load_as_float16=False).convert(
            str(out), quantization=quantization, force=True
        )
        if not target.exists():  # a concurrent conversion may have finished first; keep its result
            os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _threads() -> int:
    value = os.environ.get("OMP_NUM_THREADS")
    return max(1, int(value)) if value and value.isdigit() else max(1, os.cpu_count() or 1)


class CTranslate2LLM(ChatTemplatePrompts, LLM):
    """A chat model run by CTranslate2. `path` is the Hugging Face folder (resolve it with `ragtune.models`).

    `compute_type`: "float32" gives the transformers fp32 answers; "int8" (weights stored int8) is faster and smaller
    with answers that differ more; "auto" lets CTranslate2 pick the fastest this CPU supports.
    """

    batch_sensitive = False  # variable-length batches: no padding enters the arithmetic

    def __init__(
        self,
        path: str,
        adapter: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        name: str | None = None,
        max_length: int | None = None,
        compute_type: str | None = None,
    ):
        import ctranslate2
        from transformers import AutoTokenizer

        from ragtune.models import quiet_transformers

        quiet_transformers()
        self.path, self.adapter = path, adapter
        self.merged = bool(adapter)
        wanted = compute_type or {"bfloat16": "bfloat16", "float16": "float16"}.get(dtype or "", "float32")
        device = device or "cpu"
        if wanted not in ctranslate2.get_supported_compute_types(device) and wanted != "auto":
            wanted = "float32"  # e.g. bf16 on a CPU build of CTranslate2: fall back to the exact type
        self.compute_type = wanted
        folder = convert(path, adapter)
        key = (str(folder), wanted, _threads())
        with _LOCK:
            generator = _GENERATORS.get(key)
            if generator is None:
                generator = ctranslate2.Generator(str(folder), device=device, compute_type=wanted,
                                                  intra_threads=_threads())
                _GENERATORS[key] = generator
        self.generator = generator
        source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else path
        self.tokenizer: Any = AutoTokenizer.from_pretrained(source)
        self.dtype = wanted
        self.name = name or path
        self.max_length = max_length or 8192
        self._lock = threading.Lock()
        vocab = self.tokenizer.get_vocab()  # the chat turn's end token ends an answer, as in the transformers backend
        self._end = sorted({t for t in (self.tokenizer.eos_token, "<|im_end|>") if t and t in vocab})

    def generate(
        self, conversations: list[list[Message]], config: GenerationConfig | None = None, batch_size: int = 8
    ) -> list[Generation]:
        import ctranslate2

        from ragtune.llm.transformers_backend import _truncate_at_stop

        config = config or GenerationConfig()
        if not conversations:
            return []
        encoded = [self._encode(c, config.max_new_tokens) for c in conversations]
        options: dict[str, Any] = {"sampling_topk": 1}
        if config.temperature > 0:
            options = {"sampling_topk": 0, "sampling_topp": config.top_p, "sampling_temperature": config.temperature}
            if config.seed is not None:
                ctranslate2.set_random_seed(config.seed)
        t0 = time.perf_counter()
        with self._lock:
            results = self.generator.generate_batch(
                [self.tokenizer.convert_ids_to_tokens(ids) for ids in encoded],
                max_batch_size=max(1, batch_size),
                max_length=config.max_new_tokens,
                include_prompt_in_result=False,
                end_token=self._end,
                **options,
            )
        seconds = (time.perf_counter() - t0) / len(encoded)
        out = []
        for ids, result in zip(encoded, results, strict=True):
            tokens = result.sequences_ids[0]
            text, stopped = _truncate_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), config.stop)
            n = len(tokens)
            gen = Generation(text=text.strip(), prompt_tokens=len(ids), completion_tokens=n, seconds=seconds,
                             finish_reason="stop" if stopped or n < config.max_new_tokens else "length")
            self.usage.add(gen)
            out.append(gen)
        return out

    def loglikelihood(self, requests: list[tuple[list[Message], str]], batch_size: int = 8) -> list[float]:
        """Sum of log-probs of the continuation tokens, from CTranslate2's own scorer (one pass per request)."""
        rows: list[tuple[list[int], int]] = []
        for messages, continuation in requests:
            prompt = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            keep = max(1, self.max_length - len(cont))
            rows.append((prompt[-keep:] + cont, len(cont)))
        scored = [i for i, (_, c) in enumerate(rows) if c > 0]
        out = [0.0] * len(rows)
        if scored:
            with self._lock:
                results = self.generator.score_batch(
                    [self.tokenizer.convert_ids_to_tokens(rows[i][0]) for i in scored], max_batch_size=batch_size
                )
            for i, result in zip(scored, results, strict=True):
                out[i] = float(sum(result.log_probs[-rows[i][1]:]))  # log_probs[j] scores token j + 1
        return out
