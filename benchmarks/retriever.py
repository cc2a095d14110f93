"""Retriever training benchmark: base MiniLM vs LSR (RA-DIT R-ft) vs contrastive vs +reranker on HotpotQA.

    python benchmarks/retriever.py [--quick] [--workdir DIR] [--out benchmarks/results/retriever.json]

Held-out questions are the HotpotQA subset's evaluation split (int(sha1(_id), 16) % 5 == 0, 216 questions); every
method trains only on the other questions, turned into RAFT records by `synth from-qa` (gold paragraphs = positives,
answers for LSR). The corpus is every paragraph of the subset (11,608 paragraphs, ~12.3k chunks); `--quick` uses the
paragraphs of a few eval and train questions only, and smaller training sets (under 10 minutes here).

Reported per system, dense and hybrid: recall@2/5/10 of the gold paragraphs (by title, as benchmarks/retrieval.py),
all-gold@10, MRR, nDCG@10; training time and peak RSS per method; and, with --qa-questions, QA F1 of the bundled
SmolLM2 in the retrieved setting (top-3 chunks). Results are written after every stage, so a cut-short run keeps what
it measured. `--workdir` keeps the indexes and LM-score cache between runs (ingest is incremental). A run with
`--skip` adds its stages to the results file; a run without starts it afresh.

Recipes (chosen on 102 held-out *train* questions, never on the eval split): contrastive trains the query tower
against the frozen index on every train question (`--contrastive-tower both` for MNRL plus re-embedding a copy);
the reranker is listwise on 250 questions (2 first-stage hard negatives + 1 in-batch negative per gold chunk).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ragtune.config import SearchConfig  # noqa: E402
from ragtune.index.ingest import ingest  # noqa: E402
from ragtune.retrieve.search import Searcher  # noqa: E402

HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"


def is_eval(qid: str) -> bool:
    return int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 5 == 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quality(searcher: Searcher, questions: list[dict], mode: str) -> dict[str, float]:
    """Gold paragraphs found by title, as benchmarks/retrieval.py counts them (so the base rows match its table)."""
    sums = {"recall@2": 0.0, "recall@5": 0.0, "recall@10": 0.0, "all_gold@10": 0.0, "mrr": 0.0, "ndcg@10": 0.0}
    t0 = time.perf_counter()
    for q in questions:
        gold = {t for t, _ in q["supporting_facts"]}
        titles: list[str] = []
        for h in searcher.search(q["question"], k=10, mode=mode):
            if h.title not in titles:  # several chunks of one paragraph count once
                titles.append(h.title)
        sums["recall@2"] += len(gold & set(titles[:2])) / len(gold)
        sums["recall@5"] += len(gold & set(titles[:5])) / len(gold)
        sums["recall@10"] += len(gold & set(titles)) / len(gold)
        sums["all_gold@10"] += gold <= set(titles)
        sums["mrr"] += next((1 / (i + 1) for i, t in enumerate(titles) if t in gold), 0.0)
        dcg = sum(1 / math.log2(i + 2) for i, t in enumerate(titles) if t in gold)
        sums["ndcg@10"] += dcg / sum(1 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    n = len(questions)
    out = {k: v / n for k, v in sums.items()}
    out["n"] = n
    out["ms_per_query"] = 1000 * (time.perf_counter() - t0) / n
    return out


def qa_f1(searcher: Searcher, data_path: Path, n: int, llm: Any, run_dir: Path) -> dict[str, float]:
    """QA F1 / EM of the generator given the top-3 retrieved chunks (ragtune's eval runner, retrieved setting)."""
    from ragtune.datasets import load_dataset
    from ragtune.eval.runner import EvalSettings, evaluate

    items = load_dataset("hotpotqa", data_path, split="eval", limit=n)
    settings = EvalSettings(setting="retrieved", k=3, retrieval_mode="dense", prompt="short", batch_size=4)
    result = evaluate(items, llm, settings, run_dir, searcher, {"name": run_dir.name})
    return {k: v for k, v in result.scores.items() if k in ("f1", "em", "n") or k.startswith("recall")}


class Results:
    """The JSON written after each stage."""

    def __init__(self, path: Path, meta: dict[str, Any], keep: bool = False):
        self.path = path
        self.data: dict[str, Any] = {"meta": meta, "systems": {}, "training": {}}
        if keep and path.exists():  # a run with --skip adds to an earlier run's results instead of dropping them
            old = json.loads(path.read_text(encoding="utf-8"))
            if old.get("meta", {}).get("quick") == meta["quick"]:
                self.data["systems"] = old.get("systems", {})
                self.data["training"] = old.get("training", {})

    def system(self, name: str, **scores: Any) -> None:
        self.data["systems"].setdefault(name, {}).update(scores)
        self.save()

    def training(self, name: str, result: Any, **extra: Any) -> None:
        self.data["training"][name] = {
            "rows": result.examples, "steps": result.steps, "train_s": round(result.train_seconds, 1),
            "prepare_s": round(result.prepare_seconds, 1), "peak_rss_mb": round(result.peak_rss_mb),
            "first_loss": result.losses[0] if result.losses else None,
            "last_loss": result.losses[-1] if result.losses else None, "counts": result.counts,
            **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in {**result.extra, **extra}.items()},
        }
        self.save()

    def save(self) -> None:
        systems = self.data["systems"]
        base = systems.get("base", {}).get("dense", {})
        flat: dict[str, Any] = {}
        for name, modes in systems.items():
            for mode, scores in modes.items():
                if not isinstance(scores, dict):
                    continue
                for metric in ("recall@5", "mrr"):
                    if metric in scores:
                        key = f"{name}.{metric}" if mode == "dense" else f"{name}.{mode}.{metric}"
                        flat[key] = round(scores[metric], 4)
                        if base.get(metric):
                            flat[f"{key}.vs_base"] = round(scores[metric] / base[metric], 3)
        self.data["summary"] = flat
        for name, modes in systems.items():  # top level too: result["lsr"]["recall@5"] is the dense number
            if isinstance(modes.get("dense"), dict):
                self.data[name] = {k: v for k, v in modes["dense"].items() if k != "ms_per_query"}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")


def print_table(results: Results) -> None:
    rows = []
    base = results.data["systems"].get("base", {}).get("dense", {})
    for name, modes in results.data["systems"].items():
        for mode, s in modes.items():
            if not isinstance(s, dict) or "recall@5" not in s:
                continue
            rel = s["recall@5"] / base["recall@5"] - 1 if base.get("recall@5") else float("nan")
            rows.append(f"| {name} | {mode} | {s['recall@2']:.3f} | {s['recall@5']:.3f} | {s['recall@10']:.3f} | "
                        f"{s['all_gold@10']:.3f} | {s['mrr']:.3f} | {s['ndcg@10']:.3f} | {rel:+.1%} |")
    print("| system | mode | R@2 | R@5 | R@10 | all-gold@10 | MRR | nDCG@10 | R@5 vs base dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for name, t in results.data["training"].items():
        print(f"{name}: {t['rows']} rows, {t['steps']} steps, train {t['train_s']}s (+{t['prepare_s']}s prep), "
              f"peak RSS {t['peak_rss_mb']} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small corpus and training sets (under 10 minutes)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep indexes and caches here between runs")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--train-questions", type=int, default=None,
                        help="questions for contrastive (default: every train-split question)")
    parser.add_argument("--contrastive-tower", choices=("query", "both"), default="query",
                        help="query: query encoder vs the frozen index; both: MNRL and a re-embedded index copy")
    parser.add_argument("--rerank-questions", type=int, default=None, help="questions for the reranker")
    parser.add_argument("--rerank-candidates", type=int, default=20, help="first-stage hits the reranker reads")
    parser.add_argument("--lsr-questions", type=int, default=None, help="questions the LM scores for LSR")
    parser.add_argument("--top-k", type=int, default=None, help="LSR: chunks per question scored by the LM")
    parser.add_argument("--qa-questions", type=int, default=None, help="eval questions answered for QA F1 (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--skip", default="", help="comma list of stages to skip: lsr,contrastive,reranker,qa")
    args = parser.parse_args()
    if not HOTPOT.exists():
        sys.exit(f"{HOTPOT} is absent (only CI has ../shared)")
    import torch

    torch.set_num_threads(args.threads)
    quick = args.quick
    train_n = args.train_questions or (60 if quick else None)
    rerank_n = args.rerank_questions or (60 if quick else 250)
    lsr_n = args.lsr_questions or (40 if quick else 150)
    top_k = args.top_k or 5
    qa_n = args.qa_questions if args.qa_questions is not None else (0 if quick else 30)
    skip = set(filter(None, args.skip.split(",")))
    out = args.out or ROOT / "benchmarks" / "results" / ("retriever_quick.json" if quick else "retriever.json")
    workdir = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / ("ragtune-bench-retriever" +
                                                                         ("-quick" if quick else ""))
    workdir.mkdir(parents=True, exist_ok=True)

    data = json.loads(HOTPOT.read_text(encoding="utf-8"))
    eval_qs = sorted((q for q in data if is_eval(q["_id"])), key=lambda q: q["_id"])
    train_qs = sorted((q for q in data if not is_eval(q["_id"])), key=lambda q: q["_id"])
    if quick:
        eval_qs, train_qs = eval_qs[:50], train_qs[:train_n]
        corpus = workdir / "hotpot_quick.json"
        corpus.write_text(json.dumps(eval_qs + train_qs), encoding="utf-8")
    else:
        corpus = HOTPOT
    train_file = workdir / "hotpot_train.json"
    train_file.write_text(json.dumps(train_qs), encoding="utf-8")
    eval_file = workdir / "hotpot_eval.json"
    eval_file.write_text(json.dumps(eval_qs), encoding="utf-8")

    results = Results(out, keep=bool(skip), meta={
        "quick": quick, "corpus": str(corpus.name), "eval_questions": len(eval_qs), "train_questions_available":
        len(train_qs), "contrastive_questions": train_n or len(train_qs), "reranker_questions": rerank_n,
        "lsr_questions": lsr_n,
        "lsr_top_k": top_k, "rerank_candidates": args.rerank_candidates,
        "qa_questions": qa_n, "threads": args.threads, "embedder": "all-MiniLM-L6-v2 (bundled)",
        "lm": "SmolLM2-135M-Instruct (bundled)", "contrastive_tower": args.contrastive_tower,
    })
    started = time.perf_counter()

    # 1. the base index (incremental: a kept workdir makes this a no-op)
    base_ws = workdir / "base"
    t0 = time.perf_counter()
    summary = ingest([corpus], base_ws)
    results.data["meta"].update(chunks=summary.chunks_total, ingest_s=round(time.perf_counter() - t0, 1))
    print(f"index: {summary.chunks_total} chunks ({summary.chunks_added} embedded now, "
          f"{time.perf_counter() - t0:.0f}s)", flush=True)

    # 2. training data: RAFT records of the train questions (gold paragraphs, answers); no teacher needed
    from ragtune.synth.from_qa import FromQAConfig, synthesize_from_qa

    raft = base_ws / "synth" / "raft.jsonl"
    # rewritten each run (seconds, no teacher): a kept workdir's file may predate a FromQAConfig field
    synthesize_from_qa("hotpotqa", train_file, base_ws, FromQAConfig(split="train", distractor_source="own"),
                       out=raft, overwrite=True)

    base = Searcher(base_ws)
    results.system("base", dense=quality(base, eval_qs, "dense"), hybrid=quality(base, eval_qs, "hybrid"),
                   bm25=quality(base, eval_qs, "bm25"))
    print(f"base dense R@5 {results.data['systems']['base']['dense']['recall@5']:.3f}", flush=True)

    con_ws = workdir / "contrastive_ws" if args.contrastive_tower == "both" else base_ws
    con_out = workdir / "contrastive"
    if "contrastive" not in skip:
        from ragtune.train.retriever.contrastive import ContrastiveConfig, train_contrastive

        shutil.rmtree(con_out, ignore_errors=True)
        if args.contrastive_tower == "both":
            shutil.rmtree(con_ws, ignore_errors=True)
            shutil.copytree(base_ws, con_ws)
        r = train_contrastive(con_ws, raft, ContrastiveConfig(limit=train_n, tower=args.contrastive_tower),
                              out=con_out, progress=True)
        results.training("contrastive", r)
        con = Searcher(con_ws, SearchConfig(retriever=str(con_out)))
        results.system("contrastive", dense=quality(con, eval_qs, "dense"), hybrid=quality(con, eval_qs, "hybrid"))
        print(f"contrastive dense R@5 {results.data['systems']['contrastive']['dense']['recall@5']:.3f}",
              flush=True)

    llm = None
    if "lsr" not in skip:
        from ragtune.llm import load_llm
        from ragtune.train.retriever.lsr import LSRConfig, train_lsr

        llm = load_llm()
        r = train_lsr(base_ws, raft, LSRConfig(top_k=top_k, limit=lsr_n, batch_size=8, epochs=2), out=workdir / "lsr",
                      llm=llm, progress=True)
        results.training("lsr", r)
        lsr = Searcher(base_ws, SearchConfig(retriever=str(workdir / "lsr")))
        results.system("lsr", dense=quality(lsr, eval_qs, "dense"), hybrid=quality(lsr, eval_qs, "hybrid"))
        print(f"lsr dense R@5 {results.data['systems']['lsr']['dense']['recall@5']:.3f}", flush=True)

    if "reranker" not in skip:
        from ragtune.train.retriever.reranker import RerankerConfig, train_reranker

        r = train_reranker(base_ws, raft, RerankerConfig(limit=rerank_n, loss="listwise", negatives=2, batch_size=8),
                           out=workdir / "reranker", progress=True)
        results.training("reranker", r)
        reranked = Searcher(base_ws, SearchConfig(reranker=str(workdir / "reranker"),
                                                  rerank_candidates=args.rerank_candidates))
        results.system("base+reranker", dense=quality(reranked, eval_qs, "dense"),
                       hybrid=quality(reranked, eval_qs, "hybrid"), rerank_candidates=args.rerank_candidates)
        for mode in ("dense", "hybrid"):  # against the first stage it reorders, not only against base dense
            got = results.data["systems"]["base+reranker"][mode]["recall@5"]
            first = results.data["systems"]["base"][mode]["recall@5"]
            results.data["systems"]["base+reranker"][mode]["recall@5.vs_first_stage"] = round(got / first, 3)
            print(f"base+reranker {mode} R@5 {got:.3f} (first stage {first:.3f})", flush=True)
        results.save()

    if qa_n and "qa" not in skip:
        from ragtune.llm import load_llm

        llm = llm or load_llm()
        systems = {"base": base}
        if (workdir / "lsr" / "retriever.json").exists():
            systems["lsr"] = Searcher(base_ws, SearchConfig(retriever=str(workdir / "lsr")))
        if (con_out / "retriever.json").exists():
            systems["contrastive"] = Searcher(con_ws, SearchConfig(retriever=str(con_out)))
        for name, searcher in systems.items():
            t0 = time.perf_counter()
            scores = qa_f1(searcher, eval_file, qa_n, llm, workdir / "qa" / name)
            results.system(name, qa_retrieved_top3={**scores, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{name} QA F1 (top-3 retrieved, {qa_n} q) {scores.get('f1')}", flush=True)

    results.data["meta"].update(total_s=round(time.perf_counter() - started, 1), peak_rss_mb=round(peak_rss_mb()))
    results.save()
    print_table(results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
