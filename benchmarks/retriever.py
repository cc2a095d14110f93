"""Retriever training benchmark on two BEIR-format corpora: base MiniLM vs every retriever recipe, on held-out queries.

    python benchmarks/retriever.py [--quick] [--workdir DIR] [--out benchmarks/results/retriever.json]
                                   [--lm-adapter WS/train/NAME/adapter] [--corpora hotpotqa,scifact]

Corpora (built as BEIR folders in the workdir by `ragtune.datasets.beir`, as scripts/build_beir.py builds them):
- hotpotqa: the 1,186-question subset in ../shared (11,604 paragraphs); test = the 216 questions of ragtune's eval
  split (int(sha1(_id), 16) % 5 == 0), train = the rest. Training rows are `synth from-qa` RAFT records of the
  train questions (gold paragraphs, answers for LSR).
- scifact: the real BEIR SciFact train claims (5,183 abstracts); test = the ~20% of claims `beir.held_out` holds out
  (seed 0: 153 claims), train = the other 656 as (claim, relevant abstract) pairs. No answers: LSR scores the
  claim's likelihood given each abstract.
Scores are BEIR's (`ragtune.eval.retrieval`): nDCG@10, recall@10, recall@100, MRR@10 over held-out queries only.

Methods (`corpora.<name>.<method>`), each trained on train queries / the corpus only:
  base          the bundled MiniLM, dense (the reference every `vs_base` divides by)
  contrastive   supervised query tower on the train rows (MNRL against the frozen index)
  unsupervised  ICT / cropping pairs from the corpus alone, no labels (query tower)
  lsr_base_lm   RA-DIT LSR, chunks scored by the bundled SmolLM2
  lsr_tuned_lm  LSR scored by the RAFT-tuned generator (`--lm-adapter`; default: the demo's adapter when present)
  reranker      distilled cross-encoder over the hybrid first stage
A method's headline numbers are those of one mode: dense for the retrievers, hybrid+rerank for the reranker (the
first stage it was trained to rerank); every mode scored is under `modes`. A method that cannot run here (its
trainer missing, no tuned adapter) is `{"missing": "why"}`, never a number. `corpora.<name>.best` names the method
with the highest headline nDCG@10. Training time (`train_s`, `prepare_s`) and memory: `peak_rss_mb` is the process's
peak after the method trained (monotonic: ru_maxrss) and `rss_growth_mb` what that method added to it.

`--quick` (stages and plumbing, not the targets; meant to take under 10 minutes on 2 idle cores): 25 test + 32 train
queries per corpus, a few hundred documents each, 4 optimiser steps per method. With `--qa-questions N` (full default
30) the generator (tuned when `--lm-adapter` is given) answers N HotpotQA test questions from each retriever's top-3
chunks (`qa_retrieved_top3`). Results are written after every method, so a cut-short run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ragtune.datasets import load_hotpotqa  # noqa: E402
from ragtune.datasets.beir import (  # noqa: E402
    BeirDataset,
    from_qa_items,
    held_out,
    load_beir,
    relevant,
    training_pairs,
    write_beir,
)
from ragtune.eval.retrieval import RetrievalEvalConfig, evaluate_retrieval  # noqa: E402
from ragtune.index.ingest import ingest  # noqa: E402
from ragtune.metrics import BEIR_METRICS  # noqa: E402
from ragtune.splits import split_of  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
HOTPOT = SHARED / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"
SCIFACT = SHARED / "scifact_train"
DEMO_ADAPTER = ROOT / "ragtune-workspace" / "demo" / "train" / "demo-raft" / "adapter"
METHODS = ("base", "contrastive", "unsupervised", "lsr_base_lm", "lsr_tuned_lm", "reranker")
HEADLINE_MODE = {"reranker": "hybrid+rerank"}  # every other method: dense


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Sizes:
    """How much of each corpus and how much training a run uses."""

    def __init__(self, quick: bool, args: argparse.Namespace):
        self.test = args.test_queries or (25 if quick else None)
        self.train = args.train_queries or (32 if quick else None)
        self.distractors = 3 if quick else None  # hotpotqa quick: gold + 3 of the 8 distractor paragraphs
        self.extra_docs = 150 if quick else None  # scifact quick: relevant abstracts + this many others
        self.lsr = args.lsr_questions or (8 if quick else 150)
        self.top_k = args.top_k or (4 if quick else 10)
        self.steps = 4 if quick else None  # fixed optimiser steps (None: the trainers' epochs)
        self.batch = 16 if quick else 32  # contrastive / unsupervised batch
        self.unsup_pairs = 64 if quick else 2000
        self.rerank = args.rerank_questions or (24 if quick else 250)
        self.qa = args.qa_questions if args.qa_questions is not None else (0 if quick else 30)


# ---------------------------------------------------------------------------------------------------------------------
# Corpora as BEIR folders, plus each one's training file


def build_hotpotqa(root: Path, sizes: Sizes) -> tuple[Path, Path, Path]:
    """(BEIR folder, RAFT training file source JSON, test questions JSON)."""
    data = json.loads(HOTPOT.read_text(encoding="utf-8"))
    test = sorted((q for q in data if split_of(q["_id"]) == "eval"), key=lambda q: q["_id"])[: sizes.test]
    train = sorted((q for q in data if split_of(q["_id"]) == "train"), key=lambda q: q["_id"])[: sizes.train]
    if sizes.distractors is not None:  # keep the gold paragraphs and the first N others
        for q in test + train:
            gold = {t for t, _ in q["supporting_facts"]}
            others = [c for c in q["context"] if c[0] not in gold][: sizes.distractors]
            q["context"] = [c for c in q["context"] if c[0] in gold] + others
    root.mkdir(parents=True, exist_ok=True)
    chosen = root / "hotpotqa.json"
    chosen.write_text(json.dumps(test + train), encoding="utf-8")
    train_file = root / "hotpotqa_train.json"
    train_file.write_text(json.dumps(train), encoding="utf-8")
    test_file = root / "hotpotqa_test.json"
    test_file.write_text(json.dumps(test), encoding="utf-8")
    docs, queries, qrels = from_qa_items(load_hotpotqa(chosen))
    folder = write_beir(root / "beir", docs, queries, qrels)
    return folder, train_file, test_file


def build_scifact(root: Path, sizes: Sizes) -> Path:
    """The SciFact train claims held out 80/20 by query (seed 0); quick keeps a sample of claims and abstracts."""
    source = load_beir(SCIFACT, splits=["train"])
    train, test = held_out(source.qrels["train"], share=0.2, seed=0)
    train = {q: train[q] for q in sorted(train)[: sizes.train]}
    test = {q: test[q] for q in sorted(test)[: sizes.test]}
    docs = list(source.corpus.values())
    if sizes.extra_docs is not None:
        needed = set().union(*(relevant(d) for d in [*train.values(), *test.values()]))
        others = sorted(d for d in source.corpus if d not in needed)
        keep = needed | set(random.Random(0).sample(others, min(sizes.extra_docs, len(others))))
        docs = [d for d in docs if d.doc_id in keep]
    queries = [source.queries[q] for q in sorted({*train, *test})]
    return write_beir(root / "beir", docs, queries, {"train": train, "test": test})


def hotpotqa_raft(ws: Path, train_file: Path) -> Path:
    from ragtune.synth.from_qa import FromQAConfig, synthesize_from_qa

    raft = ws / "synth" / "raft.jsonl"
    synthesize_from_qa("hotpotqa", train_file, ws, FromQAConfig(split="train", distractor_source="own"), out=raft,
                       overwrite=True)
    return raft


def pairs_file(beir: BeirDataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in training_pairs(beir, "train")), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Results


class Results:
    """The JSON written after each method: corpora.<name>.<method>.{ndcg@10, ...} and corpora.<name>.best."""

    def __init__(self, path: Path, meta: dict[str, Any], keep_others: list[str] | None = None):
        self.path = path
        self.data: dict[str, Any] = {"meta": meta, "corpora": {}}
        if keep_others is not None:
            self.keep(keep_others)

    def keep(self, running: list[str]) -> None:
        """Carry over the corpora of an earlier run of the same kind (quick or full) that this run does not redo,
        so the corpora can be measured by separate invocations into one JSON; each corpus records its command."""
        if not self.path.exists():
            return
        earlier = json.loads(self.path.read_text(encoding="utf-8"))
        if earlier.get("meta", {}).get("quick") != self.data["meta"]["quick"]:
            return
        for name, corpus in earlier.get("corpora", {}).items():
            if name not in running:
                self.data["corpora"][name] = corpus

    def corpus(self, name: str, **meta: Any) -> None:
        fresh = {"meta": {"command": self.data["meta"].get("command")}}
        self.data["corpora"].setdefault(name, fresh)["meta"].update(meta)
        self.save()

    def method(self, corpus: str, method: str, entry: dict[str, Any]) -> None:
        self.data["corpora"][corpus][method] = entry
        self.save()

    def save(self) -> None:
        summary: dict[str, Any] = {}
        for name, corpus in self.data["corpora"].items():
            scored = {m: e for m, e in corpus.items() if m in METHODS and "ndcg@10" in e}
            base = scored.get("base", {}).get("ndcg@10")
            for m, e in scored.items():
                if base:
                    e["vs_base"] = round(e["ndcg@10"] / base, 3)
                summary[f"{name}.{m}.ndcg@10"] = round(e["ndcg@10"], 4)
            corpus["missing"] = sorted(m for m in METHODS if "missing" in corpus.get(m, {}))
            if scored:
                corpus["best"] = max(scored, key=lambda m: scored[m]["ndcg@10"])
        self.data["summary"] = summary
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")


def scored_entry(method: str, modes: dict[str, dict[str, float]], trained: Any = None, rss_before: float = 0.0
                 ) -> dict[str, Any]:
    headline = HEADLINE_MODE.get(method, "dense")
    entry: dict[str, Any] = {k: round(modes[headline][k], 4) for k in BEIR_METRICS}
    entry["mode"] = headline
    if trained is not None:
        entry.update(train_s=round(trained.train_seconds, 1), prepare_s=round(trained.prepare_seconds, 1),
                     steps=trained.steps, rows=trained.examples, peak_rss_mb=round(peak_rss_mb()),
                     rss_growth_mb=round(max(0.0, peak_rss_mb() - rss_before)), counts=trained.counts,
                     extra={k: v for k, v in trained.extra.items() if isinstance(v, str | int | float | bool)})
    entry["modes"] = {m: {k: round(v, 4) for k, v in s.items()} for m, s in modes.items()}
    return entry


# ---------------------------------------------------------------------------------------------------------------------
# The run


def run_corpus(name: str, results: Results, workdir: Path, sizes: Sizes, args: argparse.Namespace,
               skip: set[str], shared_llm: dict[str, Any]) -> None:
    root = workdir / name
    t0 = time.perf_counter()
    if name == "hotpotqa":
        folder, train_json, test_json = build_hotpotqa(root, sizes)
    else:
        folder, train_json, test_json = build_scifact(root, sizes), None, None
    beir = load_beir(folder)
    queries, qrels = beir.split("test")
    ws = root / "ws"
    summary = ingest([folder], ws)
    results.corpus(name, documents=len(beir.corpus), chunks=summary.chunks_total, test_queries=len(queries),
                   train_queries=len(beir.qrels["train"]), ingest_s=round(time.perf_counter() - t0, 1))
    print(f"{name}: {len(beir.corpus)} documents, {summary.chunks_total} chunks, {len(queries)} test queries "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    data = hotpotqa_raft(ws, train_json) if train_json else pairs_file(beir, root / "pairs.jsonl")
    results.corpus(name, training_data=data.name)

    def evaluate(retriever: str | None, reranker: str | None = None, modes: tuple[str, ...] = ("dense", "hybrid")
                 ) -> dict[str, dict[str, float]]:
        config = RetrievalEvalConfig(retrievers={"x": retriever}, modes=list(modes), reranker=reranker,
                                     rerank_candidates=args.rerank_candidates)
        return evaluate_retrieval(ws, queries, qrels, config).results["x"]

    results.method(name, "base", scored_entry("base", evaluate(None, modes=("dense", "bm25", "hybrid"))))
    print(f"{name} base dense nDCG@10 {results.data['corpora'][name]['base']['ndcg@10']:.4f}", flush=True)

    def attempt(method: str, train: Callable[[Path], Any], reranker: bool = False) -> None:
        if method in skip:
            results.method(name, method, {"missing": "skipped (--skip)"})
            return
        out = root / method
        shutil.rmtree(out, ignore_errors=True)
        before = peak_rss_mb()
        try:
            trained = train(out)
        except MissingMethod as exc:
            results.method(name, method, {"missing": str(exc)})
            print(f"{name} {method}: missing ({exc})", flush=True)
            return
        except Exception as exc:  # noqa: BLE001 - one failing recipe must not cost the others; recorded as missing
            traceback.print_exc()
            results.method(name, method, {"missing": f"failed: {type(exc).__name__}: {exc}"})
            return
        modes = evaluate(None, reranker=str(out)) if reranker else evaluate(str(out))
        results.method(name, method, scored_entry(method, modes, trained, before))
        e = results.data["corpora"][name][method]
        print(f"{name} {method} {e['mode']} nDCG@10 {e['ndcg@10']:.4f} ({e['vs_base']:.3f}x base) train "
              f"{e['train_s']}s +{e['prepare_s']}s prep", flush=True)

    from ragtune.train.retriever.contrastive import ContrastiveConfig, train_contrastive

    attempt("contrastive", lambda out: train_contrastive(
        ws, data, ContrastiveConfig(tower="query", max_steps=sizes.steps, batch_size=sizes.batch), out=out,
        progress=True))

    def unsupervised(out: Path) -> Any:
        try:
            from ragtune.train.retriever.unsupervised import UnsupervisedConfig, train_unsupervised
        except ImportError as exc:
            raise MissingMethod(f"no unsupervised trainer here ({exc})") from exc
        return train_unsupervised(ws, UnsupervisedConfig(tower="query", max_pairs=sizes.unsup_pairs,
                                                         batch_size=sizes.batch, max_steps=sizes.steps,
                                                         target=args.unsupervised_target,
                                                         pairs=args.unsupervised_pairs.split(","),
                                                         lr=args.unsupervised_lr),
                                  out=out, progress=True)

    attempt("unsupervised", unsupervised)

    from ragtune.train.retriever.lsr import LSRConfig, train_lsr

    def lsr(adapter: str | None) -> Callable[[Path], Any]:
        def train(out: Path) -> Any:
            if adapter is not None and "lm_adapter" not in LSRConfig.model_fields:
                raise MissingMethod("LSRConfig has no lm_adapter: LSR with a tuned LM is not implemented here")
            config = LSRConfig(top_k=sizes.top_k, limit=sizes.lsr, batch_size=8, max_steps=sizes.steps,
                               **({"lm_adapter": adapter} if adapter else {}))
            llm = None
            if adapter is None:  # the base LM, loaded once for every corpus
                from ragtune.llm import load_llm

                if "base_llm" not in shared_llm:
                    shared_llm["base_llm"] = load_llm()
                llm = shared_llm["base_llm"]
            return train_lsr(ws, data, config, out=out, llm=llm, progress=True)
        return train

    attempt("lsr_base_lm", lsr(None))
    if args.lm_adapter is None:
        results.method(name, "lsr_tuned_lm", {"missing": f"no tuned generator adapter: pass --lm-adapter (the demo's "
                                                         f"{DEMO_ADAPTER.relative_to(ROOT)} is absent)"})
    else:
        attempt("lsr_tuned_lm", lsr(str(args.lm_adapter)))

    from ragtune.train.retriever.reranker import RerankerConfig, train_reranker

    def reranker(out: Path) -> Any:
        return train_reranker(ws, data, RerankerConfig(loss="distill", first_stage="hybrid", limit=sizes.rerank,
                                                       negatives=3, batch_size=8, max_steps=sizes.steps),
                              out=out, progress=True)

    attempt("reranker", reranker, reranker=True)

    if name == "hotpotqa" and sizes.qa and "qa" not in skip and test_json is not None:
        qa_stage(results, root, ws, test_json, sizes.qa, args, shared_llm)


class MissingMethod(RuntimeError):
    """A method that cannot be measured here; the message says why (reported, never faked)."""


def qa_stage(results: Results, root: Path, ws: Path, test_json: Path, n: int, args: argparse.Namespace,
             shared_llm: dict[str, Any]) -> None:
    """QA F1 / EM of the generator (tuned with --lm-adapter) given each retriever's top-3 chunks."""
    from ragtune.config import SearchConfig
    from ragtune.datasets import load_dataset
    from ragtune.eval.runner import EvalSettings, evaluate
    from ragtune.llm import load_llm
    from ragtune.retrieve.search import Searcher

    adapter = str(args.lm_adapter) if args.lm_adapter else None
    llm = load_llm(adapter=adapter) if adapter else (shared_llm.get("base_llm") or load_llm())
    items = load_dataset("hotpotqa", test_json, split="all", limit=n)
    corpus = results.data["corpora"]["hotpotqa"]
    for method in ("base", "contrastive", "unsupervised", "lsr_base_lm", "lsr_tuned_lm"):
        if "ndcg@10" not in corpus.get(method, {}):
            continue
        searcher = Searcher(ws, SearchConfig(retriever=None if method == "base" else str(root / method)))
        settings = EvalSettings(setting="retrieved", k=3, retrieval_mode="dense", prompt="short", batch_size=4)
        t0 = time.perf_counter()
        run = evaluate(items, llm, settings, root / "qa" / method, searcher, {"name": method})
        corpus[method]["qa_retrieved_top3"] = {"f1": run.scores.get("f1"), "em": run.scores.get("em"),
                                               "n": run.scores.get("n"), "generator": adapter or "base",
                                               "seconds": round(time.perf_counter() - t0, 1)}
        results.save()
        print(f"hotpotqa {method} QA F1 (top-3, {n} q) {run.scores.get('f1')}", flush=True)


def print_table(results: Results) -> None:
    print("| corpus | method | mode | nDCG@10 | R@10 | R@100 | MRR@10 | vs base | train s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, corpus in results.data["corpora"].items():
        for m in METHODS:
            e = corpus.get(m, {})
            if "ndcg@10" not in e:
                print(f"| {name} | {m} | – | missing: {e.get('missing', 'not run')} | | | | | | |")
                continue
            print(f"| {name} | {m} | {e['mode']} | {e['ndcg@10']:.4f} | {e['recall@10']:.4f} | "
                  f"{e['recall@100']:.4f} | {e['mrr@10']:.4f} | {e.get('vs_base', 1.0):.3f} | "
                  f"{e.get('train_s', '')} | {e.get('peak_rss_mb', '')} |")
        print(f"| {name} | best: {corpus.get('best')} | | | | | | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small corpora and training (under 10 minutes)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep indexes and caches here between runs")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--corpora", default="hotpotqa,scifact", help="comma list: hotpotqa, scifact")
    parser.add_argument("--lm-adapter", type=Path, default=None,
                        help="the RAFT-tuned generator's LoRA adapter (lsr_tuned_lm, QA F1); default: the demo's, "
                             "when `make demo` has trained it")
    parser.add_argument("--test-queries", type=int, default=None, help="held-out queries per corpus (default all)")
    parser.add_argument("--train-queries", type=int, default=None, help="train queries per corpus (default all)")
    parser.add_argument("--lsr-questions", type=int, default=None, help="questions the LM scores for LSR")
    parser.add_argument("--top-k", type=int, default=None, help="LSR: chunks per question scored by the LM")
    parser.add_argument("--rerank-questions", type=int, default=None, help="questions for the reranker")
    parser.add_argument("--rerank-candidates", type=int, default=20, help="first-stage documents reranked")
    parser.add_argument("--qa-questions", type=int, default=None, help="HotpotQA test questions answered (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--skip", default="", help="comma list of methods (and qa) to skip")
    parser.add_argument("--unsupervised-target", choices=("pair", "hybrid"), default="pair",
                        help="what the corpus-only pseudo-queries are taught: their source passage (pair, ICT / "
                             "cropping InfoNCE) or the hybrid first stage's ranking (hybrid)")
    parser.add_argument("--unsupervised-pairs", default="ict,crop", help="pseudo-query kinds: ict, crop")
    parser.add_argument("--unsupervised-lr", type=float, default=None, help="default: the trainer's (1e-4)")
    parser.add_argument("--keep-other-corpora", action="store_true",
                        help="keep the corpora of the existing --out JSON that this run does not measure (one corpus "
                             "per invocation, one JSON)")
    args = parser.parse_args()
    corpora = [c for c in args.corpora.split(",") if c]
    sources = {"hotpotqa": HOTPOT, "scifact": SCIFACT}
    if bad := [c for c in corpora if c not in sources]:
        sys.exit(f"unknown corpus {bad[0]!r}: choose from {', '.join(sources)}")
    if absent := [str(sources[c]) for c in corpora if not sources[c].exists()]:
        sys.exit(f"{', '.join(absent)} absent (only CI has ../shared)")
    if args.lm_adapter is None and DEMO_ADAPTER.is_dir():
        args.lm_adapter = DEMO_ADAPTER
    import torch

    torch.set_num_threads(args.threads)
    sizes = Sizes(args.quick, args)
    skip = set(filter(None, args.skip.split(",")))
    out = args.out or ROOT / "benchmarks" / "results" / ("retriever_quick.json" if args.quick else "retriever.json")
    workdir = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / (
        "ragtune-bench-retriever" + ("-quick" if args.quick else ""))
    results = Results(out, meta={
        "quick": args.quick, "corpora": corpora, "split": "test (held-out queries only)",
        "metrics": list(BEIR_METRICS), "headline_mode": {m: HEADLINE_MODE.get(m, "dense") for m in METHODS},
        "embedder": "all-MiniLM-L6-v2 (bundled)", "lm": "SmolLM2-135M-Instruct (bundled)",
        "lm_adapter": str(args.lm_adapter) if args.lm_adapter else None, "threads": args.threads,
        "sizes": {k: v for k, v in vars(sizes).items()}, "rerank_candidates": args.rerank_candidates,
        "command": " ".join(sys.argv),
    }, keep_others=corpora if args.keep_other_corpora else None)
    started = time.perf_counter()
    shared_llm: dict[str, Any] = {}
    for name in corpora:
        run_corpus(name, results, workdir, sizes, args, skip, shared_llm)
    results.data["meta"].update(total_s=round(time.perf_counter() - started, 1), peak_rss_mb=round(peak_rss_mb()))
    results.save()
    print_table(results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
