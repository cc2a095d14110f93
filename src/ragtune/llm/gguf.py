"""Hugging Face weights and PEFT adapters to GGUF, through llama.cpp's own converters (never a home-made writer).

llama.cpp ships `convert_hf_to_gguf.py` (a model folder -> GGUF) and `convert_lora_to_gguf.py` (a PEFT adapter ->
a GGUF LoRA applied at load time). They are scripts in a llama.cpp checkout, not a package, so they are found in:
`--llama-cpp DIR` / `$LLAMA_CPP_DIR` (a llama.cpp checkout), else the sources vendored in an installed or unpacked
llama-cpp-python (its sdist carries `vendor/llama.cpp/`). Their Python dependencies are `gguf` (PyPI; the checkout's
own `gguf-py` is used when present), `sentencepiece`, torch and transformers.

Quantisation below 8 bits (q4_k_m) is llama.cpp's C++ quantiser: the `llama-quantize` binary when one is found, else
the same function through llama-cpp-python's bindings (`llama_model_quantize`); f16 / q8_0 / bf16 / f32 come straight
from the converter's `--outtype`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONVERTER_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZE_TYPES = {"q4_k_m": 15, "q4_0": 2, "q5_k_m": 17, "q6_k": 18}  # llama_ftype values (llama.h)
QUANTS = CONVERTER_OUTTYPES + tuple(QUANTIZE_TYPES)
REENCODE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32, **QUANTIZE_TYPES}  # llama_ftype of a re-encoded GGUF


class ConverterNotFoundError(RuntimeError):
    """llama.cpp's converter scripts (or its quantiser) are not on this machine; the message says what to install."""


@dataclass(frozen=True)
class LlamaCppTools:
    """Where llama.cpp's converters (and optionally its quantiser binary) are."""

    root: Path
    convert_hf: Path
    convert_lora: Path | None
    quantize_bin: Path | None


_HOW_TO_GET = (
    "llama.cpp's converter convert_hf_to_gguf.py was not found. Clone llama.cpp (git clone "
    "https://github.com/ggml-org/llama.cpp) and pass --llama-cpp DIR or set LLAMA_CPP_DIR=DIR, or unpack the "
    "llama-cpp-python source distribution (`pip download --no-binary :all: --no-deps llama-cpp-python`) and point "
    "LLAMA_CPP_DIR at its vendor/llama.cpp; then `pip install gguf sentencepiece`."
)


def _candidates(llama_cpp_dir: str | os.PathLike[str] | None) -> list[Path]:
    out: list[Path] = []
    for given in (llama_cpp_dir, os.environ.get("LLAMA_CPP_DIR")):
        if given:
            p = Path(given).expanduser()
            out += [p, p / "vendor" / "llama.cpp"]
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:  # an installed llama-cpp-python (editable or with vendored sources)
        pkg = Path(spec.origin).parent
        out += [pkg / "vendor" / "llama.cpp", pkg.parent / "vendor" / "llama.cpp"]
    return out


def find_tools(llama_cpp_dir: str | os.PathLike[str] | None = None, required: bool = True) -> LlamaCppTools | None:
    """llama.cpp's converters: from `llama_cpp_dir`, $LLAMA_CPP_DIR, or an installed llama-cpp-python's sources."""
    if llama_cpp_dir and not Path(llama_cpp_dir).expanduser().is_dir():
        raise ConverterNotFoundError(f"--llama-cpp {llama_cpp_dir}: no such folder. " + _HOW_TO_GET)
    for root in _candidates(llama_cpp_dir):
        script = root / "convert_hf_to_gguf.py"
        if script.is_file():
            lora = root / "convert_lora_to_gguf.py"
            return LlamaCppTools(root, script, lora if lora.is_file() else None, _quantize_binary(root))
    if required:
        raise ConverterNotFoundError(_HOW_TO_GET)
    return None


def _quantize_binary(root: Path | None) -> Path | None:
    for name in ("llama-quantize", "quantize"):
        if root is not None:
            for sub in ("build/bin", "bin", "."):
                p = root / sub / name
                if p.is_file() and os.access(p, os.X_OK):
                    return p
        found = shutil.which(name) if name == "llama-quantize" else None
        if found:
            return Path(found)
    return None


def _run(command: list[str], what: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-12:]
        hint = ""
        if any("No module named" in line for line in tail):
            hint = " (the converter's dependencies: `pip install gguf sentencepiece`)"
        raise RuntimeError(f"{what} failed{hint}:\n" + "\n".join(tail))


def convert_command(tools: LlamaCppTools, model_dir: str | os.PathLike[str], outfile: str | os.PathLike[str],
                    outtype: str = "f16") -> list[str]:
    """The converter's command line (kept separate so the arguments are testable without running it)."""
    if outtype not in CONVERTER_OUTTYPES:
        raise ValueError(f"the converter writes {', '.join(CONVERTER_OUTTYPES)}; got {outtype!r}")
    return [sys.executable, str(tools.convert_hf), str(model_dir), "--outfile", str(outfile), "--outtype", outtype]


def convert_hf(model_dir: str | os.PathLike[str], outfile: str | os.PathLike[str], quant: str = "f16",
               llama_cpp_dir: str | os.PathLike[str] | None = None) -> Path:
    """A Hugging Face model folder as one GGUF file at `quant` (f16, q8_0, ..., or q4_k_m through the quantiser)."""
    if quant not in QUANTS:
        raise ValueError(f"unknown quantisation {quant!r}; expected one of: {', '.join(QUANTS)}")
    tools = find_tools(llama_cpp_dir)
    assert tools is not None
    outfile = Path(outfile)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    if quant in CONVERTER_OUTTYPES:
        tmp = outfile.with_name(f".{outfile.name}.part")
        _run(convert_command(tools, model_dir, tmp, quant), "convert_hf_to_gguf.py")
        os.replace(tmp, outfile)
        return outfile
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=outfile.parent) as work:
        f16 = Path(work) / "model-f16.gguf"
        _run(convert_command(tools, model_dir, f16, "f16"), "convert_hf_to_gguf.py")
        tmp = Path(work) / outfile.name
        quantize(f16, tmp, quant, tools.quantize_bin)
        os.replace(tmp, outfile)
    return outfile


def quantize(source: Path, target: Path, quant: str, binary: Path | None = None) -> None:
    """llama.cpp's quantiser: the `llama-quantize` binary when given or found, else llama-cpp-python's binding."""
    binary = binary or _quantize_binary(None)
    if binary is not None:
        _run([str(binary), str(source), str(target), quant.upper()], "llama-quantize")
        return
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConverterNotFoundError(
            f"--quant {quant} needs llama.cpp's quantiser: build llama.cpp (its llama-quantize binary, on PATH or in "
            "LLAMA_CPP_DIR/build/bin) or `pip install llama-cpp-python`; f16 and q8_0 need neither."
        )
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZE_TYPES[quant]
    params.nthread = max(1, int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1))
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize({source} -> {quant}) failed")


def reencode(source: Path, target: Path, quant: str = "f16") -> Path:
    """A GGUF file (any type, quantised ones included) written again at `quant`, by llama.cpp's own quantiser
    (`llama_model_quantize` with `allow_requantize`: each tensor de-quantised, then encoded at the new type).

    Why: a 4-bit GGUF run by llama.cpp does not compute what its de-quantised weights compute in transformers.
    llama.cpp multiplies a q4_1 / q8_0 weight by activations it first rounds to 8 bits (q8_1), and on the bundled
    SmolLM2 that moves logits by up to ~1.8 (first answer token of "What is the capital of France?": "L" instead of
    "The"), so greedy answers and log-likelihood orders part from transformers'. The same weights re-encoded at f16
    (exact for the 4-bit values; f16 activations) agree to within 0.05 of a logit. Metadata, tokenizer and chat
    template are copied unchanged; the file is written under a temporary name, then renamed.
    """
    if quant not in REENCODE_TYPES:
        raise ValueError(f"unknown GGUF type {quant!r}; expected one of: {', '.join(REENCODE_TYPES)}")
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConverterNotFoundError("re-encoding a GGUF needs llama.cpp's quantiser: `pip install llama-cpp-python`")
    import llama_cpp

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = REENCODE_TYPES[quant]
    params.allow_requantize = True
    params.nthread = max(1, int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1))
    log = logging.getLogger("llama-cpp-python")  # llama-cpp-python's bridge of llama.cpp's log: one line per tensor
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params) != 0
    finally:
        log.setLevel(level)
    if failed:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({source} -> {quant}) failed")
    os.replace(tmp, target)
    return target


def lora_command(tools: LlamaCppTools, adapter_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str],
                 outfile: str | os.PathLike[str], outtype: str = "f16") -> list[str]:
    if tools.convert_lora is None:
        raise ConverterNotFoundError(f"{tools.root} has no convert_lora_to_gguf.py (an old llama.cpp?)")
    return [sys.executable, str(tools.convert_lora), str(adapter_dir), "--base", str(base_dir), "--outfile",
            str(outfile), "--outtype", outtype]


def convert_lora(adapter_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str],
                 outfile: str | os.PathLike[str], llama_cpp_dir: str | os.PathLike[str] | None = None) -> Path:
    """A PEFT LoRA adapter folder as a GGUF LoRA (f16) for llama.cpp; `base_dir` is the base model's HF folder."""
    tools = find_tools(llama_cpp_dir)
    assert tools is not None
    outfile = Path(outfile)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = outfile.with_name(f".{outfile.name}.part")
    _run(lora_command(tools, adapter_dir, base_dir, tmp), "convert_lora_to_gguf.py")
    os.replace(tmp, outfile)
    return outfile
