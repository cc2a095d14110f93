"""Which weights llama.cpp should run: speed and answers of the llama.cpp engine per GGUF type and attention kernel,
against transformers (what a user would otherwise run), on the RAG prompts `benchmarks/serve.py` sends.

    OMP_NUM_THREADS=1 python benchmarks/llamacpp_types.py              # 30 prompts, 48 new tokens, 6 engines
    OMP_NUM_THREADS=1 python benchmarks/llamacpp_types.py --quick      # 6 prompts, 24 new tokens

The prompts: the first 30 questions of examples/hotpotqa_mini, each with its top 5 chunks retrieved from them (the
workspace serve.py builds; built here when missing), rendered by `ragtune.prompts.build_messages`. Each engine answers
them one at a time, greedy, on one thread (what one server process gets in serve.py):
- `tf-fp32`: transformers, the library default (`load_llm()`), the reference answers;
- `tf-bf16`: transformers under `--dtype bfloat16` (its `auto` on a CPU with native bf16);
- `llamacpp-<type>-<attn>`: the llama.cpp engine with the bundled weights re-encoded at `f16` (its exact default) or
  `bf16` (its `auto` on a CPU with native bf16), with llama.cpp's flash-attention kernel (`fa`, the default) or without
  (`nofa`).
Reported per engine: seconds a request (all prompts' time / prompts), speedup over tf-fp32, answers identical to
tf-fp32's and to every other engine's. JSON:
benchmarks/results/llamacpp_types.json (llamacpp_types_quick.json for --quick) with `best` (the fastest llama.cpp
engine whose answers match tf-fp32's on at least 80% of the prompts) and `best_speedup`; `decode_step_ms_by_sequences`
gives llama.cpp's decoding step time for 1, 2 and 4 sequences decoded together (what continuous batching can save on
this CPU; `--only-decode-steps` measures just that).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # serve.py: the same workspace and prompts
ENGINES = {  # name: (engine, dtype, flash attention)
    "tf-fp32": ("transformers", None, None),
    "tf-bf16": ("transformers", "bfloat16", None),
    "llamacpp-f16-nofa": ("llamacpp", None, False),
    "llamacpp-f16-fa": ("llamacpp", None, True),
    "llamacpp-bf16-nofa": ("llamacpp", "bfloat16", False),
    "llamacpp-bf16-fa": ("llamacpp", "bfloat16", True),
}
MIN_AGREEMENT = 0.8


def prompts(workdir: Path, n: int) -> list:
    """The conversations benchmarks/serve.py sends (its workspace, built here when missing), the first `n`."""
    from serve import bench_workspace, rag_messages

    from ragtune.retrieve.search import Searcher

    ws, data, _ = bench_workspace(workdir)
    searcher = Searcher(str(ws))
    return [rag_messages(searcher, q["question"]) for q in data[:n]]


def decode_steps(gguf_type: str = "bf16", context: int = 800, steps: int = 16) -> dict[str, float]:
    """Median milliseconds of one llama.cpp decoding step for 1, 2 and 4 sequences decoded together (each after a
    `context`-token prompt, a cache stream per sequence, flash attention): what continuous batching can save."""
    import statistics

    import llama_cpp

    from ragtune.llm.llamacpp_backend import resolve_gguf

    model = llama_cpp.llama_model_load_from_file(str(resolve_gguf(None, gguf_quant=gguf_type).gguf).encode(),
                                                 llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 4 * 2048, 512, 512, 4
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = int(os.environ.get("OMP_NUM_THREADS", "1"))
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def step(items: list[tuple[int, int, int]]) -> float:
        for n, (seq, pos, token) in enumerate(items):
            batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, pos, 1, 0
            batch.seq_id[n][0] = seq
        batch.logits[len(items) - 1], batch.n_tokens = 1, len(items)
        started = time.perf_counter()
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    try:
        for seq in range(4):
            for start in range(0, context, 256):
                step([(seq, i, 100 + (i * 31 + seq) % 30000) for i in range(start, min(context, start + 256))])
        out = {}
        for k in (1, 2, 4):
            times = [step([(seq, context + i, 500 + i) for seq in range(k)]) for i in range(steps)]
            for seq in range(k):
                llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), seq, context, -1)
            out[str(k)] = round(1000 * statistics.median(times), 1)
        return out
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 prompts, 24 new tokens")
    parser.add_argument("--prompts", type=int, default=None, help="prompts (default 30; --quick 6)")
    parser.add_argument("--max-tokens", type=int, default=None, help="new tokens (default 48; --quick 24)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)}")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ragtune-bench-serve"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only-decode-steps", action="store_true", help="measure only the decoding step times of 1, "
                        "2 and 4 sequences and add them to the existing results file")
    args = parser.parse_args()
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(names) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; expected {', '.join(ENGINES)}")
    if "tf-fp32" not in names:
        names.insert(0, "tf-fp32")  # the reference answers
    n = args.prompts or (6 if args.quick else 30)
    max_tokens = args.max_tokens or (24 if args.quick else 48)
    out = args.out or ROOT / "benchmarks" / "results" / ("llamacpp_types_quick.json" if args.quick
                                                         else "llamacpp_types.json")

    import importlib.util

    from ragtune.llm import GenerationConfig, load_llm

    if args.only_decode_steps:
        doc = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {"benchmark": "llamacpp_types"}
        doc["decode_step_ms_by_sequences"] = {"bf16": decode_steps("bf16"), "f16": decode_steps("f16")}
        print(json.dumps(doc["decode_step_ms_by_sequences"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return

    if importlib.util.find_spec("llama_cpp") is None:
        names = [x for x in names if ENGINES[x][0] != "llamacpp"]
        print("llama-cpp-python is not installed: transformers only (pip install 'ragtune[llamacpp]')", flush=True)
    convs = prompts(args.workdir, n)
    config = GenerationConfig(max_new_tokens=max_tokens)
    results: dict[str, dict] = {}
    for name in names:
        engine, dtype, flash = ENGINES[name]
        extra = {} if flash is None else {"flash_attn": flash}
        llm = load_llm(None, engine=engine, dtype=dtype, **extra)
        llm.generate(convs[:1], GenerationConfig(max_new_tokens=2))  # warm: kernels, caches
        started = time.perf_counter()
        gens = [llm.generate([c], config)[0] for c in convs]
        seconds = time.perf_counter() - started
        results[name] = {"engine": engine, "dtype": getattr(llm, "dtype", dtype), "flash_attn": flash,
                         "s_per_request": round(seconds / len(convs), 3),
                         "completion_tokens": sum(g.completion_tokens for g in gens),
                         "texts": [g.text for g in gens]}
        print(f"{name}: {seconds / len(convs):.2f} s a request", flush=True)
        del llm
    ref = results["tf-fp32"]
    for row in results.values():
        row["speedup_vs_tf_fp32"] = round(ref["s_per_request"] / row["s_per_request"], 2)
        row["same_as"] = {other: sum(a == b for a, b in zip(row["texts"], x["texts"], strict=True))
                          for other, x in results.items()}
    eligible = [x for x in results if x.startswith("llamacpp")
                and results[x]["same_as"]["tf-fp32"] >= MIN_AGREEMENT * len(convs)]
    best = max(eligible, key=lambda x: results[x]["speedup_vs_tf_fp32"], default=None)
    print(f"\n{'engine':<22}{'s/req':>8}{'speedup':>9}{'same as tf-fp32':>17}{'same as tf-bf16':>17}")
    for name, row in results.items():
        bf16 = row["same_as"].get("tf-bf16")
        print(f"{name:<22}{row['s_per_request']:>8}{row['speedup_vs_tf_fp32']:>8}x"
              f"{row['same_as']['tf-fp32']:>14}/{len(convs)}{'' if bf16 is None else f'{bf16:>14}/{len(convs)}'}")
    print(f"best (fastest llama.cpp engine with >= {MIN_AGREEMENT:.0%} of tf-fp32's answers): {best}")
    doc = {"benchmark": "llamacpp_types", "quick": args.quick, "prompts": len(convs), "max_new_tokens": max_tokens,
           "best": best, "best_speedup": results[best]["speedup_vs_tf_fp32"] if best else None,
           "min_agreement": MIN_AGREEMENT,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "results": results}
    if any(x.startswith("llamacpp") for x in results):
        doc["decode_step_ms_by_sequences"] = {"bf16": decode_steps("bf16"), "f16": decode_steps("f16")}
        print(f"decoding step, ms, by sequences decoded together: {doc['decode_step_ms_by_sequences']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
