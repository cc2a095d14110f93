"""Export: time and size per format, and whether the exported GGUF answers as transformers does.

    OMP_NUM_THREADS=2 python benchmarks/export.py --adapter WS/train/NAME/adapter --llama-cpp LLAMA_CPP_DIR
    python benchmarks/export.py --adapter ... --quick        # 5 prompts instead of 20
    python benchmarks/export.py --adapter ... --llamacpp-only  # only merged + gguf f16 and the llama.cpp agreement,
                                                               # merged into an existing results file

Formats: merged (HF folder), gguf f16 and q8_0 (llama.cpp's converter), ollama f16 (GGUF + Modelfile), and gguf
q4_k_m when llama.cpp's quantiser is present. Agreement: greedy answers of the merged model in transformers (fp32,
one prompt at a time) against
- `gguf_agreement` (also `gguf_agreement_llamacpp`): the f16 GGUF run by llama.cpp (llama-cpp-python, greedy), the
  issue's bar being >= 18 of 20;
- `gguf_reload_agreement`: the same f16 GGUF read back by transformers' own GGUF loader (checks the converter's
  weights and tokenizer on a machine without llama-cpp-python).
The prompts are the demo's: held-out HotpotQA questions with their gold paragraphs + 2 distractors in the RAFT CoT
layout the adapter was trained on, 160 new tokens. Results: benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "hotpotqa_demo" / "hotpotqa_300.json"


def demo_prompts(n: int) -> list[list[dict[str, str]]]:
    from ragtune.datasets import load_dataset
    from ragtune.eval.runner import distractor_pool, oracle_documents
    from ragtune.prompts import build_messages

    items = load_dataset("hotpotqa", DATA, "eval", None)
    pool = distractor_pool(items)
    return [build_messages(it.question, oracle_documents(it, 2, 0, pool), "cot") for it in items[:n]]


def agreement(got: list[str], want: list[str]) -> dict:
    same = sum(a == b for a, b in zip(got, want, strict=True))
    return {"same": same, "of": len(want), "share": round(same / len(want), 3) if want else None,
            "differing": [{"i": i, "got": a[:200], "want": b[:200]}
                          for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b][:5]}


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--llama-cpp", default=None, help="llama.cpp checkout (default: $LLAMA_CPP_DIR)")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--llamacpp-only", action="store_true",
                        help="export merged + gguf f16 only, measure the llama.cpp agreement, keep the other figures")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export.json"))
    args = parser.parse_args()
    n = 5 if args.quick else args.prompts

    from ragtune.llm import GenerationConfig, load_llm
    from ragtune.llm.gguf import find_tools
    from ragtune.train.export_model import export_model

    tools = find_tools(args.llama_cpp, required=False)
    formats: list[tuple[str, str]] = [("merged", "f16")]
    if tools is not None:
        formats += [("gguf", "f16")] if args.llamacpp_only else [("gguf", "f16"), ("gguf", "q8_0"), ("ollama", "f16")]
        quantiser = tools.quantize_bin is not None or importlib.util.find_spec("llama_cpp") is not None
        if quantiser and not args.llamacpp_only:
            formats.append(("gguf", "q4_k_m"))
    work = Path(tempfile.mkdtemp(prefix="ragtune-export-bench-"))
    exports: dict[str, dict] = {}
    for fmt, quant in formats:
        key = fmt if fmt == "merged" else f"{fmt}-{quant}"
        result = export_model(args.adapter, fmt, work / key, quant=quant, llama_cpp_dir=args.llama_cpp)
        gguf_bytes = Path(result.gguf).stat().st_size if result.gguf else None
        exports[key] = {"seconds": result.seconds, "bytes": result.bytes, "mb": round(result.bytes / 1e6, 1),
                        "gguf_mb": round(gguf_bytes / 1e6, 1) if gguf_bytes else None, "files": result.files,
                        "path": result.out, "gguf": result.gguf}
        print(f"{key:14s} {result.seconds:7.1f}s {result.bytes / 1e6:8.1f} MB", file=sys.stderr)

    prompts = demo_prompts(n)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    reference = [g.text for g in load_llm(exports["merged"]["path"]).generate(prompts, config, batch_size=1)]
    doc: dict = {
        "benchmark": "export-model: time and size per format; exported GGUF vs transformers greedy answers",
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "adapter": args.adapter, "prompts": n, "max_new_tokens": args.max_new_tokens,
        "reference": "merged folder in transformers, fp32, one prompt at a time",
        "reference_seconds": round(time.perf_counter() - started, 1), "exports": exports,
    }
    if "gguf-f16" in exports and not args.llamacpp_only:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = Path(exports["gguf-f16"]["gguf"])
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent)  # the HF tokenizer the export put next to the GGUF
        folder = work / "gguf-reloaded"
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        got = [g.text for g in load_llm(str(folder)).generate(prompts, config, batch_size=1)]
        doc["gguf_reload_agreement"] = agreement(got, reference)["share"]
        doc["gguf_reload"] = agreement(got, reference)
    if "gguf-f16" in exports:
        if importlib.util.find_spec("llama_cpp") is not None:
            from ragtune.llm.llamacpp_backend import LlamaCppLLM

            t0 = time.perf_counter()
            llama = LlamaCppLLM(exports["gguf-f16"]["gguf"], max_length=4096)
            got = [g.text for g in llama.generate(prompts, config)]
            doc["gguf_agreement"] = doc["gguf_agreement_llamacpp"] = agreement(got, reference)["share"]
            doc["gguf_llamacpp"] = {**agreement(got, reference), "seconds": round(time.perf_counter() - t0, 1),
                                    "engine": "llama-cpp-python " + _version("llama_cpp_python")}
        else:
            doc["gguf_agreement"] = None
            doc["gguf_agreement_missing"] = "llama-cpp-python is not installed"
    else:
        doc["gguf_agreement"] = None
        doc["gguf_agreement_missing"] = "llama.cpp's converter was not found (--llama-cpp / LLAMA_CPP_DIR)"
    shutil.rmtree(work, ignore_errors=True)  # ~1.5 GB of exports
    for entry in exports.values():
        entry.pop("path", None), entry.pop("gguf", None)
    out = Path(args.out)
    if args.llamacpp_only and out.exists():  # keep the formats this run skipped, and the reload check
        previous = json.loads(out.read_text(encoding="utf-8"))
        previous["exports"] = {**previous.get("exports", {}), **exports}
        previous.pop("gguf_agreement_missing", None)
        doc = {**previous, **{k: v for k, v in doc.items() if k != "exports"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: doc.get(k) for k in ("gguf_agreement", "gguf_reload_agreement")}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
