"""Evaluation throughput by engine: questions / minute, tokens / s and F1 of each way to generate, same questions.

    python benchmarks/eval_throughput.py            # 100 HotpotQA eval questions (the shared dev subset)
    python benchmarks/eval_throughput.py --quick    # 16 eval questions of examples/hotpotqa_mini, 4 engines
    python benchmarks/eval_throughput.py --batching # the older study: batch 1 vs length-sorted batches (eval.json)

What is measured is what `ragtune eval` / `compare` do in the demo's setting: `ragtune.eval.runner.evaluate` over
HotpotQA eval-split questions, oracle documents + 2 distractors, the `cot` prompt, 160 new tokens, greedy. Engines:
- `tf-fp32-concat-b8`: transformers fp32 with MKL's sgemm everywhere and transformers' own key/value cache (which
  copies itself every decoding step), length-sorted batches of 8: what eval ran before, the baseline;
- every other `tf-*` engine uses ragtune's in-place growing cache (ragtune.llm.kv_cache; `-concat` turns it off);
  `tf-fp32-b8` is plain fp32 with it;
- `tf-fp32fast-b8`: fp32 whose prompt passes use oneDNN's fp32-grade bf16 math mode (ragtune's fp32 default now on
  CPUs with native bf16); `tf-mixed-b{8,16}`: bf16 linear weights inside fp32 activations (`--dtype mixed-bf16`);
- `tf-bf16-b{8,16,32}`: transformers bf16 (native on CPUs with AVX512-BF16 / AMX), and larger batches;
- `tf-bf16-eager-b8`, `tf-bf16-static-b8`: eager attention instead of SDPA; a static KV cache;
- `ct2-fp32-b8`, `ct2-int8-b8`, ...: CTranslate2 on the same weights, converted once (`pip install ctranslate2`);
- `llamacpp-f16-b1`, `llamacpp-bf16-b1`: the llama.cpp engine (`pip install 'ragtune[llamacpp]'`), one sequence at a
  time, flash attention, the bundled weights re-encoded at f16 (its exact default) or bf16 (its `--dtype auto` on a
  CPU with native bf16);
- the tuned system (base + an all-linear LoRA): `lora-unmerged-*` (PeftModel, what eval did before) vs
  `lora-merged-*` (`merge_and_unload` at load time) vs `ct2-lora-*` (merged, then converted). `--adapter` takes a real
  adapter; without one a synthetic r=16 all-linear adapter (small random B) stands in: it measures speed and whether
  merging changes answers, not what training buys.
The questions are cut into blocks of 16 and every block runs all engines, in reversed order on every other block
(A B C, C B A), so a change in the load of this shared machine hits all of them alike; medians over repeats are
reported, with the load average before and after. F1 (x100) is the
demo's token F1 of the extracted answer; `same_as_baseline` counts answers identical to the baseline's text.
`best_speedup` is the fastest base-model engine whose F1 is within 1 point of the baseline's, over `tf-fp32-concat-b8`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "examples" / "hotpotqa_mini" / "hotpotqa_mini.json"
SHARED = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"
if not SHARED.exists():
    SHARED = Path("/work/shared/data/hotpotqa/hotpot_dev_distractor_v1_subset.json")
BASELINE = "tf-fp32-concat-b8"
QUICK_ENGINES = "tf-fp32-concat-b8,tf-fp32fast-b8,tf-mixed-b8,tf-bf16-b8"
DEFAULT_ENGINES = "tf-fp32-concat-b8,tf-fp32fast-b8,tf-mixed-b8,tf-bf16-b8,tf-bf16-concat-b8,ct2-fp32-b8"
# the older, longer list (LoRA merged / unmerged, eager attention, bigger batches): pass it with --engines
ALL_ENGINES = (
    DEFAULT_ENGINES + ",tf-fp32-b8,tf-mixed-b16,ct2-int8-b8,tf-bf16-b16,tf-bf16-b32,tf-bf16-eager-b8,ct2-fp32-b16,"
    "lora-unmerged-fp32-b8,"
    "lora-merged-fp32-b8,lora-merged-mixed-b8,lora-unmerged-bf16-b8,lora-merged-bf16-b8,ct2-lora-fp32-b8,"
    "llamacpp-f16-b1,llamacpp-bf16-b1"
)
LLAMACPP_DTYPES = {"f16": None, "bf16": "bfloat16", "f32": "float32"}  # engine-name type -> load_llm dtype


def synthetic_adapter(base_path: str, folder: Path, seed: int = 0) -> Path:
    """An r=16 all-linear LoRA (the trainer's default shape) with small random B, saved once: the tuned system's
    compute cost without a training run. Its effect on answers is small but non-zero, so merging is really tested."""
    if (folder / "adapter_model.safetensors").exists():
        return folder
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 2e-3)
    peft_model.save_pretrained(folder)
    return folder


# engine-name dtype -> (load_llm dtype, fast_prefill): `fp32` is plain fp32 (MKL sgemm everywhere, what eval ran
# before), `fp32fast` adds oneDNN's fp32-grade bf16 math mode to prompt passes, `mixed` is bf16 linear weights inside
# fp32 activations (ragtune.llm.cpu_precision)
DTYPES: dict[str, tuple[str, bool]] = {
    "fp32": ("float32", False), "fp32fast": ("float32", True), "mixed": ("mixed-bf16", False),
    "bf16": ("bfloat16", False),
}


def engine_loader(name: str, adapter: str | None) -> tuple[Callable[[], Any], int, str]:
    """(load the LLM, batch size, system: base | tuned) for an engine name such as `tf-bf16-b16`."""
    from ragtune.llm import load_llm

    parts = name.split("-")
    batch = int(parts[-1][1:]) if parts[-1].startswith("b") and parts[-1][1:].isdigit() else 1
    if parts[0] == "ct2":
        tuned = parts[1] == "lora"
        compute = parts[2] if tuned else parts[1]
        return (lambda: load_llm(engine="ct2", adapter=adapter if tuned else None, compute_type=compute)), batch, (
            "tuned" if tuned else "base")
    if parts[0] == "llamacpp":  # llama.cpp, one sequence at a time: the bundled weights re-encoded at that type
        dtype_name = LLAMACPP_DTYPES[parts[1]]
        return (lambda: load_llm(engine="llamacpp", dtype=dtype_name, max_length=4096)), batch, "base"
    if parts[0] == "lora":
        merged, (dtype, fast) = parts[1] == "merged", DTYPES[parts[2]]
        return (lambda: load_llm(adapter=adapter, dtype=dtype, merge_adapter=merged, fast_prefill=fast)), batch, (
            "tuned")
    dtype, fast = DTYPES[parts[1]]
    kw: dict[str, Any] = {"dtype": dtype, "fast_prefill": fast}
    if "concat" in parts:  # transformers' own cache, which copies itself every step (what eval ran before)
        kw["generate_options"] = {"cache_implementation": "dynamic"}
    if "eager" in parts:
        kw["attn_implementation"] = "eager"
    if "static" in parts:
        kw["generate_options"] = {"cache_implementation": "static"}
    if "compile" in parts:
        kw["generate_options"] = {"cache_implementation": "static", "compile_config": None}
    return (lambda: load_llm(**kw)), batch, "base"


def run_once(items, llm, batch: int, max_new_tokens: int, distractors: int) -> dict:
    from ragtune.eval.runner import EvalSettings, evaluate

    settings = EvalSettings(setting="oracle", distractors=distractors, prompt="cot", max_new_tokens=max_new_tokens,
                            batch_size=batch)
    t0 = time.perf_counter()
    result = evaluate(items, llm, settings)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "f1": result.scores["f1"],
        "em": result.scores["em"],
        "completion_tokens": sum(r["completion_tokens"] for r in result.records),
        "prompt_tokens": sum(r["prompt_tokens"] for r in result.records),
        "generations": [r["generation"] for r in result.records],
    }


def summarise(name: str, runs: list[dict], n: int, baseline: dict | None, system: str, llm: Any) -> dict:
    secs = [r["seconds"] for r in runs]
    med = statistics.median(secs)
    first = runs[0]
    out = {
        "system": system,
        "dtype": getattr(llm, "dtype", None),
        "merged_lora": getattr(llm, "merged", None),
        "seconds_runs": [round(s, 1) for s in secs],
        "seconds_median": round(med, 1),
        "questions_per_min": round(60 * n / med, 2),
        "completion_tokens": first["completion_tokens"],
        "tokens_per_s": round(first["completion_tokens"] / med, 1),
        # prompts of ~740 tokens and answers of ~30: prefill is most of the work, so count all tokens too
        "prompt_and_new_tokens_per_s": round((first["prompt_tokens"] + first["completion_tokens"]) / med, 1),
        "prompt_tokens_mean": round(first["prompt_tokens"] / n, 1),
        "f1": round(100 * first["f1"], 2),
        "em": round(100 * first["em"], 2),
        "deterministic_across_repeats": all(r["generations"] == first["generations"] for r in runs),
    }
    if baseline is not None:
        out["speedup_vs_baseline"] = round(baseline["seconds_median"] / med, 2)
        out["f1_delta_vs_baseline"] = round(out["f1"] - baseline["f1"], 2)
        same = sum(a == b for a, b in zip(first["generations"], baseline["_generations"], strict=True))
        out["same_as_baseline"] = f"{same}/{n}"
    out["_generations"] = first["generations"]
    return out


def engines_main(args: argparse.Namespace) -> int:
    import torch

    from ragtune.datasets import load_dataset
    from ragtune.models import cache_dir, resolve_generator

    data = args.data or (MINI if args.quick else SHARED)
    items = load_dataset("hotpotqa", data, split="eval", limit=args.questions)
    names = [e.strip() for e in (args.engines or (QUICK_ENGINES if args.quick else DEFAULT_ENGINES)).split(",")]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    adapter = args.adapter
    if adapter is None and any(n.startswith(("lora-", "ct2-lora")) for n in names):
        adapter = str(synthetic_adapter(resolve_generator().path, cache_dir() / "bench" / "synthetic-lora-r16"))
    loaded: dict[str, tuple[Any, int, str]] = {}
    skipped: dict[str, str] = {}
    for name in names:
        load, batch, system = engine_loader(name, adapter)
        t0 = time.perf_counter()
        try:
            llm = load()
        except (ImportError, ValueError, RuntimeError) as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
            print(f"  skip {name}: {skipped[name]}", flush=True)
            continue
        print(f"  loaded {name} in {time.perf_counter() - t0:.1f}s", flush=True)
        loaded[name] = (llm, batch, system)
    if BASELINE not in loaded:
        raise SystemExit(f"the baseline {BASELINE} did not load: {skipped.get(BASELINE)}")
    load_before = os.getloadavg()
    started = time.time()
    for name in list(loaded):  # warm-up: first-call allocations and lazy imports are not throughput
        try:
            run_once(items[:2], loaded[name][0], 2, 8, args.distractors)
        except Exception as exc:  # noqa: BLE001 - an engine option this torch cannot run is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"  drop {name}: {skipped[name]}", flush=True)
            del loaded[name]
    runs: dict[str, list[dict]] = {name: [] for name in loaded}
    loads: list[float] = []
    # Engines alternate block by block (A B C on one block of questions, C B A on the next), so a change in the load
    # of this shared machine during the run hits every engine alike; F1 and EM are over all questions.
    blocks = [items[i : i + args.block] for i in range(0, len(items), args.block)]
    for r in range(args.repeats):
        totals: dict[str, dict] = {name: {"seconds": 0.0, "f1": 0.0, "em": 0.0, "completion_tokens": 0,
                                          "prompt_tokens": 0, "generations": []} for name in loaded}
        for b, block in enumerate(blocks):
            order = list(loaded) if (r * len(blocks) + b) % 2 == 0 else list(reversed(loaded))
            for name in order:
                llm, batch, _ = loaded[name]
                loads.append(os.getloadavg()[0])
                res = run_once(block, llm, batch, args.max_new_tokens, args.distractors)
                t = totals[name]
                t["seconds"] += res["seconds"]
                t["f1"] += res["f1"] * len(block) / len(items)
                t["em"] += res["em"] * len(block) / len(items)
                t["completion_tokens"] += res["completion_tokens"]
                t["prompt_tokens"] += res["prompt_tokens"]
                t["generations"].extend(res["generations"])
                print(f"  repeat {r + 1} block {b + 1}/{len(blocks)} {name:22s} {res['seconds']:7.1f}s "
                      f"{60 * len(block) / res['seconds']:6.2f} q/min  F1 {100 * res['f1']:5.1f}  load {loads[-1]:.1f}",
                      flush=True)
        for name in loaded:
            runs[name].append(totals[name])
    results: dict[str, dict] = {}
    base = summarise(BASELINE, runs[BASELINE], len(items), None, "base", loaded[BASELINE][0])
    base.update(speedup_vs_baseline=1.0, f1_delta_vs_baseline=0.0, same_as_baseline=f"{len(items)}/{len(items)}")
    results[BASELINE] = base
    for name in loaded:
        if name != BASELINE:
            results[name] = summarise(name, runs[name], len(items), base, loaded[name][2], loaded[name][0])
    unmerged = next((n for n in results if n.startswith("lora-unmerged-fp32")), None)
    for name, res in results.items():  # the tuned engines against the tuned system as eval ran it before
        if res["system"] == "tuned" and unmerged and name != unmerged:
            ref = results[unmerged]
            res["speedup_vs_lora_unmerged_fp32"] = round(ref["seconds_median"] / res["seconds_median"], 2)
            res["f1_delta_vs_lora_unmerged_fp32"] = round(res["f1"] - ref["f1"], 2)
            same = sum(a == b for a, b in zip(res["_generations"], ref["_generations"], strict=True))
            res["same_as_lora_unmerged_fp32"] = f"{same}/{len(items)}"
    eligible = [n for n, r in results.items() if r["system"] == "base" and n != BASELINE
                and abs(r["f1_delta_vs_baseline"]) <= 1.0]
    best = max(eligible, key=lambda n: results[n]["speedup_vs_baseline"], default=BASELINE)
    base_engines = [n for n in results if results[n]["system"] == "base"]
    fastest = max(base_engines, key=lambda n: results[n]["speedup_vs_baseline"])
    answers = {n: r.pop("_generations") for n, r in results.items()}

    header = (f"{'engine':24s} {'sys':5s} {'q/min':>7s} {'tok/s':>7s} {'F1':>6s} {'dF1':>6s} {'speedup':>8s} "
              f"{'same':>6s}")
    print("\n" + header + "\n" + "-" * len(header))
    for name, res in results.items():
        print(f"{name:24s} {res['system']:5s} {res['questions_per_min']:7.2f} {res['tokens_per_s']:7.1f} "
              f"{res['f1']:6.1f} {res['f1_delta_vs_baseline']:+6.1f} {res['speedup_vs_baseline']:7.2f}x "
              f"{res['same_as_baseline']:>6s}")
    print(f"\nbest within 1 F1 point: {best} at {results[best]['speedup_vs_baseline']}x "
          f"(F1 {results[best]['f1_delta_vs_baseline']:+.2f}); fastest: {fastest}")
    report = {
        "benchmark": "eval generation throughput by engine, same questions (oracle + distractors, cot prompt)",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "data": f"HotpotQA {Path(data).name}, eval split, first {len(items)} ids by id",
        "settings": {"setting": "oracle", "distractors": args.distractors, "prompt": "cot",
                     "max_new_tokens": args.max_new_tokens, "repeats": args.repeats},
        "baseline": BASELINE,
        "best": best,
        "best_speedup": results[best]["speedup_vs_baseline"],
        "best_f1_delta": results[best]["f1_delta_vs_baseline"],
        "fastest": fastest,
        "target": "best_speedup >= 2.5 with |best_f1_delta| <= 1 (F1 x100)",
        "meets_target": results[best]["speedup_vs_baseline"] >= 2.5,
        "adapter": adapter if args.adapter else f"synthetic r=16 all-linear LoRA ({adapter})" if adapter else None,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "loadavg_1min_at_each_run": {"median": round(statistics.median(loads), 2), "max": round(max(loads), 2)},
            "note": "2 cores shared with other jobs: absolute figures are noisy, the interleaved ratios less so",
        },
        "wall_seconds": round(time.time() - started, 1),
        "skipped": skipped,
        "results": results,
        "answers": answers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="HotpotQA file (default: the shared dev subset; "
                        "--quick: examples/hotpotqa_mini)")
    parser.add_argument("--questions", type=int, default=None)
    parser.add_argument("--distractors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--block", type=int, default=16, help="questions per block; engines alternate per block")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--engines", default=None, help=f"comma list (default: {DEFAULT_ENGINES})")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter folder for the tuned-system engines")
    parser.add_argument("--quick", action="store_true", help="14 questions, 1 repeat, 5 engines: under 10 minutes")
    parser.add_argument("--batching", action="store_true", help="the older study: batch 1 vs batched (eval.json)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.batching:
        return batching_main(sys.argv[1:])
    args.questions = args.questions or (16 if args.quick else 100)
    args.repeats = args.repeats or 1
    args.out = args.out or ROOT / "benchmarks" / "results" / (
        "eval_throughput_quick.json" if args.quick else "eval_throughput.json")
    return engines_main(args)


# ---- the older study: batch 1 vs length-sorted batches (fp32, 32 new tokens) ----------------------------------


def _batching_run(items, llm, settings, sort: bool = True) -> tuple[float, list[str], dict]:
    from ragtune.eval.runner import evaluate

    t0 = time.perf_counter()
    result = evaluate(items, llm, settings, sort_by_length=sort)
    seconds = time.perf_counter() - t0
    return seconds, [r["generation"] for r in result.records], result.scores


def batching_measure(
    items, llm, setting: str, distractors: int, batch: int, repeats: int, max_new_tokens: int, unsorted: bool
) -> dict:
    from ragtune.eval.runner import EvalSettings

    def settings(bs: int) -> EvalSettings:
        return EvalSettings(setting=setting, distractors=distractors, batch_size=bs, max_new_tokens=max_new_tokens)

    modes = {"batch1": (1, True), "batched": (batch, True)}
    if unsorted:
        modes["batched-unsorted"] = (batch, False)
    runs: dict[str, list[float]] = {m: [] for m in modes}
    outputs: dict[str, list[str]] = {}
    scores: dict[str, dict] = {}
    _batching_run(items[:2], llm, settings(2))  # warm-up: first-call allocations and lazy imports are not throughput
    for r in range(repeats):
        names = list(modes) if r % 2 == 0 else list(reversed(modes))
        for name in names:
            bs, sort = modes[name]
            if name == "batched-unsorted" and r > 0:
                continue  # the naive baseline once is enough to show the padding cost
            seconds, gens, sc = _batching_run(items, llm, settings(bs), sort)
            runs[name].append(seconds)
            outputs.setdefault(name, gens)
            scores.setdefault(name, sc)
            print(
                f"  {setting:11s} {name:16s} repeat {r + 1}: {seconds:6.1f}s  {60 * len(items) / seconds:5.1f} q/min",
                flush=True,
            )
    result: dict = {
        "questions": len(items),
        "distractors": distractors if setting == "oracle" else None,
        "batch_size": batch,
        "max_new_tokens": max_new_tokens,
    }
    for name, secs in runs.items():
        med = statistics.median(secs)
        result[name] = {
            "seconds_runs": [round(s, 2) for s in secs],
            "seconds_median": round(med, 2),
            "questions_per_min": round(60 * len(items) / med, 2),
            "f1": scores[name]["f1"],
            "prompt_tokens_mean": scores[name]["prompt_tokens"] / len(items),
            "completion_tokens": scores[name]["completion_tokens"],
        }
    ratio = result["batch1"]["seconds_median"] / result["batched"]["seconds_median"]
    result["speedup_batched_vs_batch1"] = round(ratio, 2)
    if "batched-unsorted" in result:
        result["speedup_unsorted_vs_batch1"] = round(
            result["batch1"]["seconds_median"] / result["batched-unsorted"]["seconds_median"], 2
        )
    same = sum(a == b for a, b in zip(outputs["batch1"], outputs["batched"], strict=True))
    result["identical_outputs_batch1_vs_batched"] = f"{same}/{len(items)}"
    return result


def batching_main(argv: list[str]) -> int:
    """The batch-1 vs length-sorted batches study (fp32, 32 new tokens): benchmarks/results/eval.json."""
    parser = argparse.ArgumentParser(description="eval throughput: batch 1 vs batched, same questions")
    parser.add_argument("--batching", action="store_true")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--distractors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--no-unsorted", action="store_true", help="Skip the naive-padding baseline.")
    parser.add_argument("--no-closed-book", action="store_true")
    parser.add_argument("--quick", action="store_true", help="8 questions, 1 repeat.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.questions, args.repeats = 8, 1

    import torch

    from ragtune.datasets import load_dataset
    from ragtune.llm import load_llm

    items = load_dataset("hotpotqa", args.data, split="eval", limit=args.questions)
    llm = load_llm(dtype="float32")
    load_before = os.getloadavg()
    started = time.time()
    results: dict = {}

    def write() -> None:
        # Written after each setting, so a long run interrupted in the closed-book part keeps the oracle figures.
        report = {
            "benchmark": "eval throughput: questions/min at batch 1 vs batched, same questions",
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "data": f"HotpotQA dev distractor subset, eval split, first {len(items)} ids",
            "model": llm.name,
            "target": "batched >= 1.5x batch 1 on the oracle setting",
            "machine": {
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "platform": platform.platform(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "note": "shared 2-core machine; other jobs ran concurrently, so absolute numbers are noisy",
            },
            "wall_seconds": round(time.time() - started, 1),
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    results["oracle"] = batching_measure(
        items,
        llm,
        "oracle",
        args.distractors,
        args.batch_size,
        args.repeats,
        args.max_new_tokens,
        not args.no_unsorted,
    )
    results["oracle"]["meets_target"] = results["oracle"]["speedup_batched_vs_batch1"] >= 1.5
    write()
    if not args.no_closed_book:
        results["closed-book"] = batching_measure(
            items, llm, "closed-book", 0, args.batch_size, args.repeats, args.max_new_tokens, False
        )
        write()
    o = results["oracle"]
    print(
        f"oracle: batch1 {o['batch1']['questions_per_min']} q/min, batched {o['batched']['questions_per_min']} q/min "
        f"-> {o['speedup_batched_vs_batch1']}x; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
