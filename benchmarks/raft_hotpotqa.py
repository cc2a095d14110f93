"""RAFT on HotpotQA: the bundled SmolLM2-135M before and after RAFT-LoRA, and ragtune's trainer against plain TRL.

    python benchmarks/raft_hotpotqa.py            # 100 eval questions, K = 0..6, one epoch (417 steps)
    python benchmarks/raft_hotpotqa.py --quick    # 10 questions, K = 0 and 3, 25 steps: every stage, small

Split: HotpotQA (../shared/data) by `int(sha1(_id), 16) % 5 == 0` -> eval, the rest -> train; never trained on eval.
1. Data: `ragtune synth from-qa --cot evidence-short` on the train split (gold evidence quoted, then `<ANSWER>:`).
2. Train: `ragtune.train.sft.train_sft`, LoRA r16 all-linear, a fixed number of optimiser steps
   (one epoch by default), so a busy machine trains the same adapter as an idle one (`--minutes` for a budget).
3. Quality: on the first N eval questions (sorted by `_id`), oracle (2 gold) + K distractors for each K, the base model
   under both prompts (short answer, RAFT CoT) and the tuned model under the CoT prompt it was trained on. The ratio
   is tuned F1 / the base model's best prompt at that K. The open setting: each eval question's own ten paragraphs
   pooled into one index, hybrid top-4 retrieved.
4. Cost: training tokens/s and peak memory of ragtune's trainer vs a plain TRL `SFTTrainer` with TRL's defaults, on
   the same rows, LoRA config and hyper-parameters, each in its own process, alternating, medians. On a CPU ragtune
   runs one unpadded row per forward pass (same optimiser step) and puts the LM head on the answer tokens only.

Results: benchmarks/results/raft_hotpotqa.json (raft_hotpotqa_quick.json for --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"
if not DEFAULT_DATA.exists():
    DEFAULT_DATA = Path("/work/shared/data/hotpotqa/hotpot_dev_distractor_v1_subset.json")


def parse_ks(text: str) -> list[int]:
    from ragtune.eval.runner import parse_distractors

    return parse_distractors(text)


# ---- throughput: one process per measurement, so peak memory is that trainer's alone -------------------------------


def throughput_child(kind: str, workspace: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One epoch over the same rows with ragtune's trainer or plain TRL; report tokens/s and peak memory."""
    import resource

    from ragtune.train.config import LoraSettings, SFTRunConfig
    from ragtune.train.sft import train_sft

    # One epoch over the same examples for both: every row is seen once, so the peak-memory batch (the longest
    # examples) is met by both trainers, whatever order their samplers pick.
    config = SFTRunConfig(
        epochs=1.0, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_length=args.max_length, lora=LoraSettings(r=16, dropout=args.lora_dropout), save_steps=10_000,
        limit=args.throughput_examples,
    )
    if kind == "ragtune":
        result = train_sft(workspace, config=config, name="throughput-ragtune", overwrite=True, quiet=True)
        return {"tokens_per_second": result.tokens_per_second, "peak_memory_mb": result.peak_memory_mb,
                "tokens": result.tokens, "seconds": result.seconds}

    # Plain TRL, as a user would write it: the same prompt-completion rows (so the same loss), LoRA config and
    # hyper-parameters, everything else TRL's and transformers' defaults (random batches; TRL's bf16=True default).
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ragtune.models import resolve_generator
    from ragtune.train.sft import build_rows, drop_too_long

    path = resolve_generator(None).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = build_rows(workspace, workspace / "synth" / "raft.jsonl", config)
    rows, _ = drop_too_long(rows, tokenizer, config.max_length)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=SFTConfig(
            output_dir=str(workspace / "train" / "throughput-trl"), num_train_epochs=1, learning_rate=args.lr,
            per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
            max_length=args.max_length, report_to="none", save_strategy="no", seed=0,
            include_num_input_tokens_seen="non_padding", disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),  # TRL refuses to start on a CPU without it (its bf16 default)
        ),
        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=args.lora_dropout, target_modules="all-linear",
                               task_type="CAUSAL_LM"),
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    tokens = trainer.state.num_input_tokens_seen
    return {"tokens_per_second": round(tokens / seconds, 1), "tokens": tokens, "seconds": round(seconds, 2),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def measure_throughput(workspace: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"trl": [], "ragtune": []}
    for r in range(args.throughput_repeats):
        for kind in (("trl", "ragtune") if r % 2 == 0 else ("ragtune", "trl")):
            cmd = [sys.executable, __file__, "--_throughput", kind, "--workspace", str(workspace),
                   "--lr", str(args.lr),
                   "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum),
                   "--max-length", str(args.max_length), "--throughput-examples", str(args.throughput_examples),
                   "--lora-dropout", str(args.lora_dropout)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"throughput run {kind} failed:\n{done.stderr[-3000:]}")
            runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  throughput {kind}: {runs[kind][-1]}", file=sys.stderr)

    def median(kind: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in runs[kind])

    out: dict[str, Any] = {"runs": runs}
    for kind in runs:
        out[kind] = {"tokens_per_second": median(kind, "tokens_per_second"),
                     "peak_memory_mb": median(kind, "peak_memory_mb")}
    out["tokens_per_second_ratio"] = round(out["ragtune"]["tokens_per_second"] / out["trl"]["tokens_per_second"], 3)
    out["peak_memory_ratio"] = round(out["ragtune"]["peak_memory_mb"] / out["trl"]["peak_memory_mb"], 3)
    return out


# ---- quality ---------------------------------------------------------------------------------------------------------


def holdout_split(data: Path, n: int, ws: Path) -> tuple[Path, Path | None]:
    """The training source without its first `n` train-split questions (sorted by id), and those questions.

    Why: a recipe (distractor counts, dropout) must be chosen on questions the student never trained on and the
    benchmark never scores; the eval split is for the final figure only. With n = 0 the data is used as it is."""
    if n <= 0:
        return data, None
    from ragtune.datasets import load_dataset

    rows = json.loads(data.read_text(encoding="utf-8"))
    held = {it.id for it in load_dataset("hotpotqa", data, split="train", limit=n)}  # the runs' own id order
    train, val = ws / f"train_without_holdout{n}.json", ws / f"holdout{n}.json"
    train.write_text(json.dumps([r for r in rows if r["_id"] not in held]), encoding="utf-8")
    val.write_text(json.dumps([r for r in rows if r["_id"] in held]), encoding="utf-8")
    return train, val


def evaluate_systems(items, ks, base, tuned, adapter, args, searcher=None, after_k=None) -> dict[str, Any]:
    """Each (setting, K, prompt, model) run keeps its answers under WORKSPACE/eval-cache: greedy decoding makes them
    a pure function of model weights, prompts and settings (all in the runner's resume signature, with the adapter's
    weight hash and the question set), so a second run re-scores the base model's answers instead of regenerating
    them, and a run cut short resumes where it stopped."""
    from ragtune.eval.runner import EvalSettings, adapter_fingerprint, evaluate
    from ragtune.hashing import short_id

    question_set = short_id(json.dumps(sorted(it.id for it in items)))

    def run(llm, prompt: str, setting: str, k: int) -> dict[str, Any]:
        settings = EvalSettings(setting=setting, distractors=k, k=args.retrieved_k, prompt=prompt,  # type: ignore[arg-type]
                                max_new_tokens=args.short_tokens if prompt == "short" else args.cot_tokens,
                                batch_size=args.eval_batch)
        is_tuned = llm is tuned
        system = {"model": "default", "adapter": str(adapter) if is_tuned else "", "questions": question_set,
                  "adapter_weights": adapter_fingerprint(str(adapter)) if is_tuned else "", "data": str(args.data),
                  "dtype": args.eval_dtype}
        # one folder per question set too: a run on other questions (a --quick check) must not replace the answers
        # of a long sweep that is being finished over several sessions
        model = f"tuned-{system['adapter_weights'][:8]}" if is_tuned else "base"  # candidates share one cache
        name = f"{setting}-k{k}-{prompt}-{model}-{args.eval_dtype}-q{len(items)}-{question_set}"
        run_dir = (args.eval_cache or args.workspace / "eval-cache") / name
        t0 = time.perf_counter()
        result = evaluate(items, llm, settings, run_dir=run_dir, searcher=searcher, system=system)
        scores, seconds = result.scores, time.perf_counter() - t0
        tagged = statistics.fmean("<ANSWER>:" in r["generation"] for r in result.records)
        print(f"  {setting} K={k} {prompt:5s} {'tuned' if llm is tuned else 'base '}: F1 {100 * scores['f1']:.1f} "
              f"EM {100 * scores['em']:.1f}, <ANSWER>: in {100 * tagged:.0f}% ({seconds:.0f}s)", file=sys.stderr)
        return {"f1": round(100 * scores["f1"], 2), "em": round(100 * scores["em"], 2),
                "answer_tag_rate": round(tagged, 3), "quote_precision": scores.get("quote_precision"),
                "degenerate_rate": scores.get("degenerate_rate"), "loop_rate": scores.get("loop_rate"),
                "seconds": round(seconds, 1), "_f1s": [float(r["f1"]) for r in result.records]}

    per_k: dict[str, Any] = {}
    for k in ks:
        setting = "oracle" if searcher is None else "retrieved"
        row = {"base_short": run(base, "short", setting, k), "base_cot": run(base, "cot", setting, k),
               "tuned_cot": run(tuned, "cot", setting, k)}
        best = max(("base_short", "base_cot"), key=lambda name: row[name]["f1"])
        row["base_best_prompt"] = best.split("_")[1]
        row["base_best"] = row[best]
        row["f1_ratio"] = round(row["tuned_cot"]["f1"] / row[best]["f1"], 3) if row[best]["f1"] else None
        if row[best]["f1"]:  # paired bootstrap over questions of tuned F1 / the base model's best prompt's F1
            from ragtune.metrics import ratio_bootstrap

            _, low, high = ratio_bootstrap(row[best]["_f1s"], row["tuned_cot"]["_f1s"])
            row["f1_ratio_ci"] = [round(low, 3), round(high, 3)]
        for name in ("base_short", "base_cot", "tuned_cot"):
            row[name].pop("_f1s", None)
        per_k[str(k) if searcher is None else "retrieved"] = row
        if after_k is not None:  # the results file grows K by K: a sweep cut short keeps what it measured
            after_k(per_k)
    return per_k


def summarise(per_k: dict[str, Any]) -> dict[str, Any]:
    rows = list(per_k.values())

    def mean(path: tuple[str, str]) -> float:
        return round(statistics.fmean(r[path[0]][path[1]] for r in rows), 2)

    ratios = [r["f1_ratio"] for r in rows if r["f1_ratio"] is not None]
    return {
        "base": {"f1": mean(("base_best", "f1")), "em": mean(("base_best", "em"))},
        "tuned": {"f1": mean(("tuned_cot", "f1")), "em": mean(("tuned_cot", "em"))},
        "f1_ratio_mean_over_k": round(mean(("tuned_cot", "f1")) / mean(("base_best", "f1")), 3)
        if mean(("base_best", "f1")) else None,
        "f1_ratio_median_over_k": round(statistics.median(ratios), 3) if ratios else None,
        "f1_ratio_min_over_k": round(min(ratios), 3) if ratios else None,
        # the lowest lower end of the per-K 95% intervals: "at least this ratio at every K", with its uncertainty
        "f1_ratio_ci_low_min_over_k": min((r["f1_ratio_ci"][0] for r in rows if r.get("f1_ratio_ci")), default=None),
    }


def print_table(per_k: dict[str, Any], title: str) -> None:
    print(f"\n{title}")
    print("| K | base short F1 | base CoT F1 | tuned CoT F1 / EM | tuned answer-tag rate | tuned / base best "
          "[95% CI] |")
    print("|---|---|---|---|---|---|")
    for k, r in per_k.items():
        tag = r["tuned_cot"].get("answer_tag_rate")
        ci = r.get("f1_ratio_ci")
        print(f"| {k} | {r['base_short']['f1']:.1f} | {r['base_cot']['f1']:.1f} | {r['tuned_cot']['f1']:.1f} / "
              f"{r['tuned_cot']['em']:.1f} | {'–' if tag is None else f'{100 * tag:.0f}%'} | "
              f"{r['f1_ratio'] if r['f1_ratio'] is not None else '–'}x"
              f"{f' [{ci[0]:.2f}, {ci[1]:.2f}]' if ci else ''} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 questions, K = 0 and 3, 25 training steps, its own "
                   "adapter (train/raft-lora-quick)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--workspace", type=Path, default=ROOT / "ragtune-workspace" / "bench-raft")
    p.add_argument("--questions", type=int, default=None, help="eval questions (default 100; quick 10)")
    p.add_argument("--ks", default=None, help="distractor counts to evaluate (default 0..6; quick 0,3)")
    p.add_argument("--minutes", type=float, default=None, help="a time budget instead of fixed steps (the trainer "
                   "times its first steps and sets a schedule that completes in it; the adapter then depends on the "
                   "machine's speed). Default: none, the run trains fixed steps")
    p.add_argument("--max-steps", type=int, default=None, help="train exactly this many optimiser steps (default: "
                   "--epochs over the training data, 417 steps of batch 2 for the 834 train-split examples; quick "
                   "25): the same adapter whatever else the machine is doing")
    p.add_argument("--eval-dtype", default=None, help="dtype of the evaluated models (default bfloat16 on CPUs with "
                   "native bf16, where generation is 1.66x faster here, else float32)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-4)
    # Small batches: on a CPU budget of minutes, more optimiser steps over the same tokens teach the format faster.
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=768)
    p.add_argument("--lora-layers", default="all", help="decoder layers with adapters for the quality run: all, "
                   "top:N or A-B (the throughput table always adapts every layer, like the TRL baseline)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout, for ragtune and the TRL baseline "
                   "alike (0 skips PEFT's dropout copies: 1.7x the tokens/s and 0.8x the memory on this CPU)")
    p.add_argument("--train-distractors", default="1",
                   help="k distractors in the training examples: N, or LO-HI to draw each example's k from a range")
    p.add_argument("--p-oracle", type=float, default=1.0)
    p.add_argument("--holdout", type=int, default=0, help="leave the first N train-split questions (by id) out of "
                   "the RAFT training data, so recipes can be compared on them with --eval-on val (default 0)")
    p.add_argument("--eval-on", choices=("eval", "val"), default="eval", help="eval: the first --questions "
                   "eval-split questions (the benchmark); val: the --holdout train-split questions, for choosing a "
                   "recipe without looking at the eval split")
    p.add_argument("--cot", default="evidence-short")
    p.add_argument("--retrieved-k", type=int, default=4)
    p.add_argument("--short-tokens", type=int, default=32)
    p.add_argument("--cot-tokens", type=int, default=160)
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--throughput-examples", type=int, default=None, help="rows of the trainer-vs-TRL epoch "
                   "(default 32; quick 6)")
    p.add_argument("--throughput-repeats", type=int, default=None)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--only-throughput", action="store_true", help="measure only ragtune's trainer vs plain TRL and "
                   "write it as `throughput` into the existing results JSON (the quality sweep there is kept as is)")
    p.add_argument("--skip-retrieved", action="store_true")
    p.add_argument("--eval-cache", type=Path, default=None, help="folder of cached answers (default "
                   "WORKSPACE/eval-cache); candidates trained in their own workspaces share the base model's answers")
    p.add_argument("--adapter", default=None, help="evaluate this adapter instead of training one")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/"
                   "raft_hotpotqa[_quick].json)")
    p.add_argument("--_throughput", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._throughput:
        print(json.dumps(throughput_child(args._throughput, args.workspace, args)))
        return

    import torch

    torch.manual_seed(0)
    quick = args.quick
    questions = args.questions or (10 if quick else 100)
    ks = parse_ks(args.ks or ("0,3" if quick else "0..6"))
    # Fixed steps unless a time budget is asked for: a benchmark's adapter must not depend on the host's speed.
    if args.max_steps is None and args.minutes is None and quick:
        args.max_steps = 25
    args.throughput_examples = args.throughput_examples or (6 if quick else 32)
    args.throughput_repeats = args.throughput_repeats or (1 if quick else 2)
    if not args.data.exists():
        sys.exit(f"{args.data} not found: the benchmark reads HotpotQA from ../shared/data")

    from ragtune.datasets import load_dataset
    from ragtune.llm import load_llm
    from ragtune.synth.from_qa import FromQAConfig, synthesize_from_qa
    from ragtune.train.config import LoraSettings, SFTRunConfig
    from ragtune.train.sft import train_sft

    ws = args.workspace
    ws.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.eval_on == "val" and args.holdout <= 0:
        sys.exit("--eval-on val needs --holdout N: the validation questions are the held-out train-split ones")
    train_data, val_data = holdout_split(args.data, args.holdout, ws)
    low, _, high = str(args.train_distractors).partition("-")
    synth = synthesize_from_qa("hotpotqa", train_data, ws, FromQAConfig(
        cot=args.cot, distractors=int(low), distractors_max=int(high) if high else None, p_oracle=args.p_oracle,
        split="train"), overwrite=True)
    print(f"RAFT data: {synth.examples_total} train-split examples ({args.cot}, K={args.train_distractors}, "
          f"P={args.p_oracle})", file=sys.stderr)

    throughput = None if args.skip_throughput and not args.only_throughput else measure_throughput(ws, args)
    if args.only_throughput:
        name = "raft_hotpotqa_quick.json" if quick else "raft_hotpotqa.json"
        out = args.out or ROOT / "benchmarks" / "results" / name
        report = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {"benchmark": "raft_hotpotqa"}
        report["throughput"] = throughput | {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "settings": {"examples": args.throughput_examples, "repeats": args.throughput_repeats, "lr": args.lr,
                         "batch_size": args.batch_size, "grad_accum": args.grad_accum,
                         "max_length": args.max_length, "lora_dropout": args.lora_dropout},
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        }
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"trainer throughput vs plain TRL SFTTrainer (medians): {throughput['tokens_per_second_ratio']}x "
              f"tokens/s, {throughput['peak_memory_ratio']}x peak memory; wrote `throughput` into {out}")
        return

    if args.adapter:
        adapter, training = args.adapter, None
        summary_file = Path(args.adapter).parent / "train_summary.json"
        if summary_file.exists():  # an adapter trained by an earlier (cut-short) run keeps its training record
            trained = json.loads(summary_file.read_text(encoding="utf-8"))
            training = {k: v for k, v in trained.items() if k != "history"} | {"loss_curve": trained.get("history")}
    else:
        budget = {"max_steps": args.max_steps or -1, "max_minutes": None if args.max_steps else args.minutes}
        config = SFTRunConfig(epochs=args.epochs, **budget, lr=args.lr, batch_size=args.batch_size,
                              lora=LoraSettings(r=16, dropout=args.lora_dropout, layers=args.lora_layers),
                              grad_accum=args.grad_accum, max_length=args.max_length, save_steps=25)
        # a quick check never replaces the full run's adapter (a sweep over several sessions evaluates that one)
        result = train_sft(ws, config=config, name="raft-lora-quick" if quick else "raft-lora", overwrite=True)
        adapter = result.output
        training = {k: v for k, v in result.to_dict().items() if k not in ("history", "config")}
        training["config"] = result.config
        training["loss_curve"] = result.history

    if args.eval_on == "val":
        items = load_dataset("hotpotqa", val_data, split="train", limit=questions)
    else:
        items = load_dataset("hotpotqa", args.data, split="eval", limit=questions)
    if args.eval_dtype is None:
        from ragtune.train.common import cpu_has_fast_bf16

        args.eval_dtype = "bfloat16" if cpu_has_fast_bf16() and not torch.cuda.is_available() else "auto"
    base, tuned = load_llm(None, dtype=args.eval_dtype), load_llm(None, adapter=adapter, dtype=args.eval_dtype)

    default_name = "raft_hotpotqa_quick.json" if quick else "raft_hotpotqa.json"
    results = args.out or ROOT / "benchmarks" / "results" / default_name

    def write(per_k: dict[str, Any], retrieved: dict[str, Any] | None) -> dict[str, Any]:
        """Results so far: written after each K of the oracle sweep and again after the open setting, so a run cut
        short keeps what it measured (`ks_done`; rerun the same command to finish: answers come from the cache)."""
        summary = summarise(per_k)
        out = {
            "benchmark": "raft_hotpotqa",
            "quick": quick,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
            "data": str(args.data),
            "eval_questions": len(items),
            "ks": ks,
            "ks_done": [int(k) for k in per_k],
            "complete": len(per_k) == len(ks) and (args.skip_retrieved or retrieved is not None),
            **summary,
            "per_k": per_k,
            "retrieved": retrieved,
            "training": training,
            "throughput": throughput if throughput is not None else previous_throughput,
            "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "seconds": round(time.perf_counter() - started, 1),
        }
        out["settings"]["data"] = str(args.data)
        out["settings"]["workspace"] = str(args.workspace)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
        return summary

    # --skip-throughput keeps the trainer-vs-TRL table of an earlier run (`--only-throughput` measures it alone)
    previous_throughput = None
    if results.exists():
        previous_throughput = json.loads(results.read_text(encoding="utf-8")).get("throughput")
    per_k = evaluate_systems(items, ks, base, tuned, adapter, args, after_k=lambda done: write(done, None))
    summary = write(per_k, None)
    retrieved = None
    if not args.skip_retrieved:
        from ragtune.index.ingest import ingest
        from ragtune.retrieve.search import Searcher

        ids = {it.id for it in items}
        pool = [q for q in json.loads(args.data.read_text(encoding="utf-8")) if q["_id"] in ids]
        corpus_ws = ws / "open"
        corpus = ws / "open_corpus.json"
        corpus.write_text(json.dumps(pool), encoding="utf-8")
        ingest([corpus], corpus_ws)
        retrieved = evaluate_systems(items, [0], base, tuned, adapter, args, searcher=Searcher(corpus_ws))
        summary = write(per_k, retrieved)

    which = "held-out train-split" if args.eval_on == "val" else "eval"
    print_table(per_k, f"HotpotQA, {len(items)} {which} questions, oracle (2 gold) + K distractors, F1 x100")
    if retrieved:
        print_table(retrieved, f"Open setting: hybrid top-{args.retrieved_k} over the questions' pooled paragraphs")
    print(f"\nmean over K: base best F1 {summary['base']['f1']:.1f} (EM {summary['base']['em']:.1f}) -> tuned F1 "
          f"{summary['tuned']['f1']:.1f} (EM {summary['tuned']['em']:.1f}); ratio {summary['f1_ratio_mean_over_k']}x, "
          f"min over K {summary['f1_ratio_min_over_k']}x")
    if training:
        print(f"training: {training['examples']} examples available, {training['steps']} steps, "
              f"{training['tokens']:,} tokens in {training['seconds']:.0f}s "
              f"({training['tokens_per_second']:.0f} tok/s)")
    if throughput:
        print(f"trainer throughput vs plain TRL SFTTrainer (medians): {throughput['ragtune']['tokens_per_second']:.0f} "
              f"vs {throughput['trl']['tokens_per_second']:.0f} tokens/s = {throughput['tokens_per_second_ratio']}x; "
              f"peak memory {throughput['ragtune']['peak_memory_mb']:.0f} vs {throughput['trl']['peak_memory_mb']:.0f}"
              f" MB = {throughput['peak_memory_ratio']}x")
    print(f"results: {results}")


if __name__ == "__main__":
    main()
