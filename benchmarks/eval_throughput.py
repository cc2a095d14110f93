"""Evaluation throughput (questions / minute) at batch size 1 and batched, on the same questions.

    python benchmarks/eval_throughput.py            # 16 HotpotQA questions, oracle + 2 distractors (~650 tokens)
    python benchmarks/eval_throughput.py --quick    # 8 questions, 1 repeat: a smoke run

What is measured is what `ragtune eval` does: `ragtune.eval.runner.evaluate` with the bundled SmolLM2 through
`ragtune.llm.load_llm`, greedy, fp32 on CPU. Three ways to run the same questions:
- batch1:           one question per forward pass;
- batched:          length-sorted batches of B (the default of `ragtune eval`);
- batched-unsorted: batches of B in id order (naive padding: each batch pays for its longest prompt).
Repeats alternate the modes so a change in machine load hits all of them alike; the median is reported. The closed-
book setting (short prompts) is measured too, for contrast. Results go to benchmarks/results/eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"
if not DEFAULT_DATA.exists():
    DEFAULT_DATA = Path("/work/shared/data/hotpotqa/hotpot_dev_distractor_v1_subset.json")


def _run(items, llm, settings, sort: bool = True) -> tuple[float, list[str], dict]:
    from ragtune.eval.runner import evaluate

    t0 = time.perf_counter()
    result = evaluate(items, llm, settings, sort_by_length=sort)
    seconds = time.perf_counter() - t0
    return seconds, [r["generation"] for r in result.records], result.scores


def measure(
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
    _run(items[:2], llm, settings(2))  # warm-up: first-call allocations and lazy imports are not throughput
    for r in range(repeats):
        names = list(modes) if r % 2 == 0 else list(reversed(modes))
        for name in names:
            bs, sort = modes[name]
            if name == "batched-unsorted" and r > 0:
                continue  # the naive baseline once is enough to show the padding cost
            seconds, gens, sc = _run(items, llm, settings(bs), sort)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--distractors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--no-unsorted", action="store_true", help="Skip the naive-padding baseline.")
    parser.add_argument("--no-closed-book", action="store_true")
    parser.add_argument("--quick", action="store_true", help="8 questions, 1 repeat.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval.json")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.repeats = 8, 1

    import torch

    from ragtune.eval.datasets import load_dataset
    from ragtune.llm import load_llm

    items = load_dataset("hotpotqa", args.data, split="eval", limit=args.questions)
    llm = load_llm()
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

    results["oracle"] = measure(
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
        results["closed-book"] = measure(
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
