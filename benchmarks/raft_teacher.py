"""RAFT from unlabelled documents with the bundled SmolLM2-135M as teacher, against the base model and against a
student trained on labelled data (`synth from-qa`) of the same size.

    python benchmarks/raft_teacher.py            # 300 chunks, 2 questions each, 100 steps, 48 eval questions
    python benchmarks/raft_teacher.py --quick    # 40 records' paragraphs, 12 chunks, 12 steps, 6 questions (<10 min)
    python benchmarks/raft_teacher.py --yield-sweep   # synthesis only: which settings raise the teacher's yield

1. Documents: the paragraphs of the HotpotQA subset's train-split records (split by `int(sha1(_id), 16) % 5`),
   written as plain {title, text} JSONL — no question, no answer, no supporting fact — and ingested. Paragraphs whose
   title also appears in an eval-split record are left out, so no eval evidence is trained on.
2. `synth raft` with the bundled teacher (few-shot prompts, grounding, filters), 1 distractor, P = 1.0, the short
   chain of thought (quotes + answer, as from-qa's `evidence-short`): the recipe of benchmarks/raft_hotpotqa.py.
3. The same number of `synth from-qa --cot evidence-short` examples from the labelled train split.
4. Two students, LoRA r16 all-linear, the same fixed number of optimiser steps on the same number of rows.
5. Eval-split questions, oracle (2 gold paragraphs) + K distractors for K = 0, 3, 6: the base model under both prompts
   (short answer, RAFT CoT; the best one per K is the baseline), each student under the CoT prompt. Paired bootstrap
   (95%) of student minus base best, F1 x100.

Results: benchmarks/results/raft_teacher.json (raft_teacher_quick.json for --quick) with `yield`,
`tuned_over_base_min` and `ci_low_min` (the lowest interval bound over K of the raft student minus base best).
Target (issue 21): tuned F1 >= 1.5x the base model's best prompt at every K, the interval above zero.

`--yield-sweep` chooses synthesis settings on train-split paragraphs only (another seed's spread of chunks, written
to its own workspace): one run with `--resample 2` gives the yield of resample 0, 1 and 2 (each kept example records the
attempt that produced it, and an attempt depends only on the earlier ones' failures); the rejected candidates are
then re-judged offline with the real functions: a lower fuzzy threshold, and the student round trip (`either`) on
the questions the retriever missed. Results: benchmarks/results/raft_teacher_yield.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
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


def _is_eval(qid: str) -> bool:
    return int(hashlib.sha1(qid.encode("utf-8")).hexdigest(), 16) % 5 == 0


def write_documents(data: Path, out: Path, records_limit: int | None = None) -> int:
    """The train split's paragraphs as unlabelled documents (one JSONL line each, sorted by title), from the first
    `records_limit` train records by `_id` (all by default)."""
    records = sorted(json.loads(data.read_text(encoding="utf-8")), key=lambda r: r["_id"])
    eval_titles = {t for r in records if _is_eval(r["_id"]) for t, _ in r["context"]}
    train = [r for r in records if not _is_eval(r["_id"])][:records_limit]
    docs: dict[str, str] = {}
    for r in train:
        for title, sentences in r["context"]:
            text = "".join(sentences).strip()
            if title not in eval_titles and text:
                docs.setdefault(title, text)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for title in sorted(docs):
            f.write(json.dumps({"title": title, "text": docs[title]}) + "\n")
    return len(docs)


def yield_sweep(args: argparse.Namespace, docs_ws: Path, chunks: int) -> dict[str, Any]:
    """Synthesis only, on train-split paragraphs: the yield of each setting and what it costs in candidates."""
    from collections import Counter

    from ragtune.index.store import ChunkStore
    from ragtune.llm import load_llm
    from ragtune.retrieve.search import Searcher
    from ragtune.synth import filters, grounding
    from ragtune.synth.quality import quality_report
    from ragtune.synth.raft import RaftConfig, synthesize_raft
    from ragtune.synth.store import iter_groups, read_raft

    teacher = load_llm()
    config = RaftConfig(limit=chunks, questions_per_chunk=args.questions_per_chunk, distractors=1, p_oracle=1.0,
                        cot_style="short", concurrency=args.concurrency, question_tokens=args.question_tokens,
                        seed=7, resample=2)
    sweep_ws = docs_ws.parent / "yield-sweep"
    out = sweep_ws / "synth" / "raft.jsonl"
    all_chunks = ChunkStore(docs_ws).read_chunks()
    t0 = time.perf_counter()
    if not args.sweep_files_only:
        synthesize_raft(sweep_ws, teacher, config, chunks=all_chunks, out=out, overwrite=args.fresh,
                        searcher=Searcher(docs_ws))
    report = quality_report(out)  # from the files, so a sweep stopped between waves is read as far as it went
    kept = read_raft(out)
    done = {g["group_id"] for g in iter_groups(out)}
    rejected = [r for g in iter_groups(filters.rejected_path(out)) for r in g["examples"] if r["chunk_id"] in done]
    slots = report["candidates"] - sum(int(g.get("counts", {}).get("question_retries", 0)) for g in iter_groups(out))
    by_attempt = Counter(e.metadata.get("attempt", 0) for e in kept)
    n_chunks = report["chunks"]
    settings: dict[str, Any] = {}
    for r in range(config.resample + 1):
        n_kept = sum(v for a, v in by_attempt.items() if a <= r)
        settings[f"resample {r}"] = {"kept": n_kept, "yield": round(n_kept / n_chunks, 3),
                                     "kept_per_slot": round(n_kept / slots, 3) if slots else 0.0}
    # offline what-ifs on the rejected candidates (an upper bound: a slot saved at attempt 0 would not be resampled)
    chunks_by_id = {c.chunk_id: c for c in all_chunks}
    not_found = [r for r in rejected if r["reason"] == "answer not in chunk"]
    for threshold in (80.0, 75.0):
        saved = sum(grounding.ground(r["question"], r["answer"], chunks_by_id[r["chunk_id"]].text, threshold,
                                     config.max_quotes, config.short_answer_words).ok for r in not_found)
        settings[f"fuzzy {threshold:.0f} (offline, answerable rejections regrounded)"] = {
            "saved": saved, "of": len(not_found)}
    missed = [r for r in rejected if r["filter"] == "round_trip" and r["answer"]]
    grounded = [r for r in missed if grounding.ground(r["question"], r["answer"], chunks_by_id[r["chunk_id"]].text,
                                                      config.fuzzy_threshold, config.max_quotes,
                                                      config.short_answer_words).ok]
    check = filters.StudentCheck(teacher, config.student_match, batch_size=args.concurrency)
    verdicts = check.verdicts([(r["question"], r["answer"], chunks_by_id[r["chunk_id"]].title,
                                chunks_by_id[r["chunk_id"]].text) for r in grounded])
    settings["round trip either (offline, student on the retriever's misses)"] = {
        "missed": len(missed), "grounded": len(grounded), "student_passed": sum(ok for ok, _ in verdicts),
        "examples": [{"question": r["question"], "answer": r["answer"], "student": why}
                     for r, (_ok, why) in zip(grounded, verdicts, strict=True)][:8]}
    # precision's proxy: does the student, shown the chunk, give the kept answer? (what `both` would keep)
    kept_verdicts = check.verdicts([(e.question, e.answer, chunks_by_id[e.group_id].title,
                                     chunks_by_id[e.group_id].text) for e in kept])
    for r in range(config.resample + 1):
        rows = [ok for e, (ok, _) in zip(kept, kept_verdicts, strict=True) if e.metadata.get("attempt", 0) == r]
        settings[f"resample {r}"]["attempt_{r}_student_agrees"] = f"{sum(rows)}/{len(rows)}"
    settings["round trip both (offline: kept examples the student also answers)"] = {
        "kept": sum(ok for ok, _ in kept_verdicts), "of": len(kept)}
    return {
        "benchmark": "raft_teacher_yield",
        "documents": "train-split HotpotQA paragraphs (unlabelled), seed 7 spread",
        "chunks": n_chunks,
        "slots": slots,
        "candidates": report["candidates"],
        "teacher_seconds": report["teacher_seconds"],
        "seconds": round(time.perf_counter() - t0, 1),
        "settings": settings,
        "rejected_by_filter": {k: f["rejected"] for k, f in report["filters"].items()},
        "rejected_reasons": {k: f["reasons"] for k, f in report["filters"].items() if f["reasons"]},
        "kept_examples": [{"question": e.question, "answer": e.answer, "attempt": e.metadata.get("attempt"),
                           "student": why} for e, (_ok, why) in zip(kept, kept_verdicts, strict=True)],
    }


def _metrics():
    try:
        from ragtune.metrics import paired_bootstrap, per_question_means
    except ImportError:  # before the foundation move
        from ragtune.eval.metrics import paired_bootstrap, per_question_means
    return paired_bootstrap, per_question_means


def train_student(ws: Path, data: Path, name: str, rows: int, args: argparse.Namespace) -> dict[str, Any]:
    from ragtune.train.config import LoraSettings, SFTRunConfig
    from ragtune.train.sft import train_sft

    config = SFTRunConfig(epochs=1.0, max_steps=args.steps, max_minutes=None, lr=args.lr, batch_size=args.batch_size,
                          grad_accum=1, max_length=args.max_length, lora=LoraSettings(r=16, dropout=args.lora_dropout),
                          save_steps=10_000, split="all", limit=rows, seed=0)
    result = train_sft(ws, data_path=data, config=config, name=name, overwrite=True, quiet=True)
    info = {k: v for k, v in result.to_dict().items() if k not in ("history", "config")}
    info["loss_curve"] = result.history
    return info


def evaluate_all(items, ks, systems: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every (K, system) run, answers cached under WORKSPACE/eval-cache (greedy decoding: a rerun re-scores)."""
    from ragtune.eval.runner import EvalSettings, adapter_fingerprint, evaluate
    from ragtune.hashing import short_id

    paired_bootstrap, per_question_means = _metrics()
    question_set = short_id(json.dumps(sorted(it.id for it in items)))
    per_k: dict[str, Any] = {}
    for k in ks:
        row: dict[str, Any] = {}
        scores: dict[str, dict[str, float]] = {}
        for name, (llm, prompt, adapter) in systems.items():
            settings = EvalSettings(setting="oracle", distractors=k, prompt=prompt, batch_size=args.eval_batch,
                                    max_new_tokens=args.short_tokens if prompt == "short" else args.cot_tokens)
            system = {"model": "default", "adapter": str(adapter or ""), "questions": question_set,
                      "adapter_weights": adapter_fingerprint(str(adapter)) if adapter else "", "data": str(args.data),
                      "dtype": args.eval_dtype}
            run_dir = args.workspace / "eval-cache" / f"k{k}-{name}-{args.eval_dtype}-q{len(items)}-{question_set}"
            t0 = time.perf_counter()
            result = evaluate(items, llm, settings, run_dir=run_dir, system=system)
            scores[name] = per_question_means(result.records, "f1")
            row[name] = {"f1": round(100 * result.scores["f1"], 2), "em": round(100 * result.scores["em"], 2),
                         "seconds": round(time.perf_counter() - t0, 1)}
            print(f"  K={k} {name:12s} F1 {row[name]['f1']:.1f} ({row[name]['seconds']:.0f}s)", file=sys.stderr)
        best = max(("base_short", "base_cot"), key=lambda n: row[n]["f1"])
        row["base_best_prompt"] = best.split("_", 1)[1]
        row["base_best"] = row[best]
        ids = sorted(scores[best])
        for student in ("raft", "from_qa"):
            diff, low, high = paired_bootstrap([100 * scores[best][i] for i in ids],
                                               [100 * scores[student][i] for i in ids])
            row[f"{student}_minus_base"] = {"diff": round(diff, 2), "ci_low": round(low, 2), "ci_high": round(high, 2)}
            row[f"{student}_over_base"] = (round(row[student]["f1"] / row[best]["f1"], 3) if row[best]["f1"]
                                           else None)
        diff, low, high = paired_bootstrap([100 * scores["from_qa"][i] for i in ids],
                                           [100 * scores["raft"][i] for i in ids])
        row["raft_minus_from_qa"] = {"diff": round(diff, 2), "ci_low": round(low, 2), "ci_high": round(high, 2)}
        per_k[str(k)] = row
    return per_k


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="12 chunks, 12 steps, 6 eval questions, 128 CoT tokens: "
                   "every stage, small; the numbers mean nothing at this size")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--workspace", type=Path, default=None, help="default ragtune-workspace/bench-raft-teacher[-quick]")
    p.add_argument("--chunks", type=int, default=None, help="documents the teacher writes questions for "
                   "(default 300; quick 12)")
    p.add_argument("--records", type=int, default=None, help="train records whose paragraphs are the documents "
                   "(default all, ~9,000 paragraphs, ~7 min to embed; quick 40)")
    p.add_argument("--questions-per-chunk", type=int, default=2)
    p.add_argument("--question-tokens", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--resample", type=int, default=0, help="few-shot: ask a rejected slot again up to N times")
    p.add_argument("--round-trip", default="retriever", help="retriever | student | either | both")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per student (default 100; quick 12)")
    p.add_argument("--questions", type=int, default=None, help="eval questions (default 48; quick 6)")
    p.add_argument("--ks", default="0,3,6")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=768)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--short-tokens", type=int, default=32)
    p.add_argument("--cot-tokens", type=int, default=None, help="default 160; quick 128")
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--eval-dtype", default=None)
    p.add_argument("--fresh", action="store_true", help="synthesise again instead of resuming the teacher's file")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--yield-sweep", action="store_true", help="synthesis only, on other train-split chunks: the "
                   "yield of resample 0/1/2, a lower fuzzy threshold and the student round trip")
    p.add_argument("--sweep-files-only", action="store_true", help="with --yield-sweep: analyse the sweep's files "
                   "as they are (a sweep stopped between waves) without synthesising more")
    args = p.parse_args()
    quick = args.quick
    args.workspace = args.workspace or ROOT / "ragtune-workspace" / ("bench-raft-teacher-quick" if quick
                                                                      else "bench-raft-teacher")
    chunks = args.chunks or (12 if quick else 300)
    args.steps = args.steps or (12 if quick else 100)
    questions = args.questions or (6 if quick else 48)
    args.cot_tokens = args.cot_tokens or (128 if quick else 160)
    ks = [int(k) for k in args.ks.split(",")]
    if not args.data.exists():
        sys.exit(f"{args.data} not found: the benchmark reads HotpotQA from ../shared/data")

    import torch

    from ragtune.datasets import load_dataset
    from ragtune.index.ingest import ingest
    from ragtune.llm import load_llm
    from ragtune.synth.from_qa import FromQAConfig, synthesize_from_qa
    from ragtune.synth.raft import RaftConfig, report_paths, synthesize_raft
    from ragtune.synth.store import read_raft

    torch.manual_seed(0)
    started = time.perf_counter()
    ws = args.workspace
    docs_ws, qa_ws = ws / "docs", ws / "from-qa"
    records = args.records or (40 if quick else None)
    n_docs = write_documents(args.data, ws / "documents.jsonl", records)
    ingest([ws / "documents.jsonl"], docs_ws)  # unchanged documents are not embedded again
    print(f"documents: {n_docs} unlabelled train-split paragraphs", file=sys.stderr)
    if args.yield_sweep:
        sweep = yield_sweep(args, docs_ws, args.chunks or 20)
        results = args.out or ROOT / "benchmarks" / "results" / "raft_teacher_yield.json"
        results.write_text(json.dumps(sweep, indent=2, default=str) + "\n", encoding="utf-8")
        print(json.dumps(sweep["settings"], indent=1, default=str))
        print(f"results: {results}")
        return

    # 1. the teacher on unlabelled documents
    teacher = load_llm()
    raft_config = RaftConfig(limit=chunks, questions_per_chunk=args.questions_per_chunk, distractors=1, p_oracle=1.0,
                             cot_style="short", concurrency=args.concurrency, question_tokens=args.question_tokens,
                             seed=0, resample=args.resample, round_trip=args.round_trip)
    t0 = time.perf_counter()
    synth = synthesize_raft(docs_ws, teacher, raft_config, overwrite=args.fresh, progress=False)
    synth_seconds = time.perf_counter() - t0
    report = json.loads(report_paths(synth.out)[0].read_text(encoding="utf-8"))
    n_raft = len(read_raft(synth.out))
    print(f"synth raft: {n_raft} examples from {report['chunks']} chunks (yield {report['yield_per_chunk']}), "
          f"teacher {report['teacher_seconds'] / 60:.1f} min", file=sys.stderr)
    if n_raft == 0:
        sys.exit("the teacher produced no valid example: nothing to train on")

    # 2. labelled data of the same size
    synthesize_from_qa("hotpotqa", args.data, qa_ws, FromQAConfig(cot="evidence-short", distractors=1, p_oracle=1.0,
                                                                 split="train", limit=n_raft), overwrite=True)
    qa_file = qa_ws / "synth" / "raft.jsonl"

    # 3. two students, same steps, same rows
    training = {"raft": train_student(docs_ws, synth.out, "student-raft", n_raft, args),
                "from_qa": train_student(qa_ws, qa_file, "student-from-qa", n_raft, args)}

    # 4. evaluation
    items = load_dataset("hotpotqa", args.data, split="eval", limit=questions)
    if args.eval_dtype is None:
        from ragtune.train.common import cpu_has_fast_bf16

        args.eval_dtype = "bfloat16" if cpu_has_fast_bf16() and not torch.cuda.is_available() else "auto"
    base = load_llm(None, dtype=args.eval_dtype)
    raft_adapter, qa_adapter = training["raft"]["output"], training["from_qa"]["output"]
    systems = {
        "base_short": (base, "short", None),
        "base_cot": (base, "cot", None),
        "raft": (load_llm(None, adapter=raft_adapter, dtype=args.eval_dtype), "cot", raft_adapter),
        "from_qa": (load_llm(None, adapter=qa_adapter, dtype=args.eval_dtype), "cot", qa_adapter),
    }
    per_k = evaluate_all(items, ks, systems, args)

    ratios = [r["raft_over_base"] for r in per_k.values() if r["raft_over_base"] is not None]
    out = {
        "benchmark": "raft_teacher",
        "quick": quick,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "data": str(args.data),
        "documents": n_docs,
        "chunks": report["chunks"],
        "yield": report["yield_per_chunk"],
        "examples": n_raft,
        "candidates": report["candidates"],
        "rejection_rate": {name: f["rate"] for name, f in report["filters"].items()},
        "rejected": {name: f["rejected"] for name, f in report["filters"].items()},
        "grounding": report["grounding"],
        "teacher_minutes": round(report["teacher_seconds"] / 60, 2),
        "synth_minutes": round(synth_seconds / 60, 2),
        "eval_questions": len(items),
        "ks": ks,
        "tuned_over_base_min": min(ratios) if ratios else None,
        "tuned_over_base_mean": round(statistics.fmean(ratios), 3) if ratios else None,
        "ci_low_min": min(r["raft_minus_base"]["ci_low"] for r in per_k.values()),
        "raft_minus_from_qa_mean": round(statistics.fmean(r["raft_minus_from_qa"]["diff"] for r in per_k.values()),
                                         2),
        "target_met": bool(ratios) and min(ratios) >= 1.5
        and min(r["raft_minus_base"]["ci_low"] for r in per_k.values()) > 0,
        "per_k": per_k,
        "quality_report": report,
        "training": training,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"chunks": chunks, "records": records},
        "seconds": round(time.perf_counter() - started, 1),
    }
    name = "raft_teacher_quick.json" if quick else "raft_teacher.json"
    results = args.out or ROOT / "benchmarks" / "results" / name
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")

    print(f"\nHotpotQA, {len(items)} eval questions, oracle + K distractors, F1 x100; students trained on {n_raft} "
          f"rows, {args.steps} steps")
    print("| K | base short | base CoT | raft (teacher) | from-qa (labels) | raft - base best [95% CI] | raft / base |")
    print("|---|---|---|---|---|---|---|")
    for k, r in per_k.items():
        d = r["raft_minus_base"]
        print(f"| {k} | {r['base_short']['f1']:.1f} | {r['base_cot']['f1']:.1f} | {r['raft']['f1']:.1f} | "
              f"{r['from_qa']['f1']:.1f} | {d['diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] | "
              f"{r['raft_over_base']}x |")
    rates = ", ".join(f"{k} {100 * v:.0f}%" for k, v in out["rejection_rate"].items())
    print(f"yield {out['yield']} valid examples per chunk ({n_raft} from {out['chunks']} chunks); rejected: {rates}; "
          f"teacher {out['teacher_minutes']} min")
    print(f"results: {results}")


if __name__ == "__main__":
    main()
