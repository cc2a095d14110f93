"""Retrieval benchmark on the HotpotQA corpus: quality per mode, indexing overhead, search latency at scale.

    python benchmarks/retrieval.py [--quick] [--out benchmarks/results/retrieval.json]

What it compares, in one run:
- recall@2/5/10 of the gold supporting paragraphs, all-gold@10 and MRR for bm25 / dense / hybrid, over every
  question and over the evaluation split (int(sha1(_id), 16) % 5 == 0) that later issues train against;
- indexing throughput of `ragtune ingest` as a ratio to a bare `SentenceTransformer.encode` of the same texts;
- hybrid search latency p50/p95 at 10k, 100k and 1M chunks (vectors replicated with noise, texts replicated), next
  to bare FAISS (exact inner product) + bare bm25s + the same RRF on the same data;
- LanceDB against exact search: overlap of the dense top-10 with FAISS's exact top-10;
- peak memory (RSS);
- the advanced retrieval options of `ragtune.retrieve` (query transforms, sentence window, parent chunk / document,
  routing to the summary level, LLM reranking) next to plain hybrid, over the evaluation split's paragraphs with
  their sentence and summary levels (benchmarks/retrieval_options.py).
`--quick` uses only the evaluation split's paragraphs and stops at 100k chunks, and measures the options on 40
questions' paragraphs with 5 LLM questions (under 10 minutes here). `--options-only` runs only the options section
and updates that part of an existing results file; `--options-workspace DIR` keeps (and reuses) its index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lancedb  # noqa: E402,F401  - imported before any timing: a one-off cost, not throughput

from ragtune.config import IngestConfig, SearchConfig  # noqa: E402
from ragtune.corpus.loaders import load_paths  # noqa: E402
from ragtune.index.embedding import Embedder  # noqa: E402
from ragtune.index.fusion import reciprocal_rank_fusion  # noqa: E402
from ragtune.index.ingest import ingest  # noqa: E402
from ragtune.index.levels import SENTENCES, SUMMARIES, build_level  # noqa: E402
from ragtune.index.lexical import LexicalIndex  # noqa: E402
from ragtune.index.settings import IndexSettings, index_text  # noqa: E402
from ragtune.index.store import ChunkStore  # noqa: E402
from ragtune.records import Chunk  # noqa: E402
from ragtune.retrieve.search import Searcher  # noqa: E402
from ragtune.workspace import Workspace  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import retrieval_options  # noqa: E402

HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"


def is_eval(qid: str) -> bool:
    return int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 5 == 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quality(searcher: Searcher, questions: list[dict], mode: str) -> dict[str, float]:
    r2 = r5 = r10 = allgold = mrr = 0.0
    latencies = []
    for q in questions:
        gold = {t for t, _ in q["supporting_facts"]}
        t0 = time.perf_counter()
        hits = searcher.search(q["question"], k=10, mode=mode)
        latencies.append(time.perf_counter() - t0)
        titles = [h.title for h in hits]
        r2 += len(gold & set(titles[:2])) / len(gold)
        r5 += len(gold & set(titles[:5])) / len(gold)
        r10 += len(gold & set(titles)) / len(gold)
        allgold += gold <= set(titles)
        mrr += next((1 / (i + 1) for i, t in enumerate(titles) if t in gold), 0.0)
    n = len(questions)
    return {"recall@2": r2 / n, "recall@5": r5 / n, "recall@10": r10 / n, "all_gold@10": allgold / n,
            "mrr": mrr / n, "n": n, "latency_p50_ms": 1000 * statistics.median(latencies)}


def percentile_ms(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, p))


def scale_latency(base_ws: Path, sizes: list[int], queries: list[str], embedder: Embedder, tmp: Path) -> list[dict]:
    """Replicate the corpus to each size and time ragtune's hybrid search against bare FAISS + bm25s + RRF."""
    import faiss

    store = ChunkStore(base_ws)
    table = store.scan(["chunk_id", "doc_id", "title", "text", "vector"])
    texts = table["text"].to_pylist()
    titles = table["title"].to_pylist()
    base_vectors = np.asarray(table["vector"].to_pylist(), dtype=np.float32)
    qvecs = embedder.encode(queries)
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        reps = -(-size // len(texts))
        ws = tmp / f"scale{size}"
        shutil.rmtree(ws, ignore_errors=True)
        scale_store = ChunkStore(ws)
        scale_store.create(base_vectors.shape[1])
        IndexSettings(embedder=embedder.resolved.reference, dim=base_vectors.shape[1]).save(scale_store.workspace)
        all_vectors = []
        t0 = time.perf_counter()
        made = 0
        for r in range(reps):
            n = min(len(texts), size - made)
            if n <= 0:
                break
            noise = rng.normal(0, 0.02, size=(n, base_vectors.shape[1])).astype(np.float32)
            vecs = base_vectors[:n] + (noise if r else 0)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            chunks = [Chunk(chunk_id=f"{r}-{i}", doc_id=f"{r}-{i}", text=texts[i], start=0, end=len(texts[i]),
                            source=f"rep{r}", title=titles[i]) for i in range(n)]
            for s in range(0, n, 50_000):
                part = chunks[s : s + 50_000]
                scale_store.add(part, vecs[s : s + 50_000], {c.doc_id: "k" for c in part})
            all_vectors.append(vecs)
            made += n
        scale_store.compact()
        build_s = time.perf_counter() - t0
        vectors = np.concatenate(all_vectors)
        searcher = Searcher(ws, SearchConfig(), embedder=embedder)
        t0 = time.perf_counter()
        searcher.refresh()  # builds the BM25 index over the replicated texts
        bm25_build_s = time.perf_counter() - t0
        # Time search only (query vectors precomputed on both sides): embedding cost is the same for both.
        ragtune_lat, bare_lat, lance_lat, faiss_lat = [], [], [], []
        overlap, lance_overlap = [], []
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        bare_texts = [index_text(titles[i % len(titles)], texts[i % len(texts)]) for i in range(len(vectors))]
        bare_bm25 = LexicalIndex.build(bare_texts)
        del bare_texts
        for q, qv in zip(queries, qvecs, strict=True):
            t0 = time.perf_counter()
            dense = [cid for cid, _ in searcher.dense_by_vector(qv, 50)]
            lexical = [cid for cid, _ in searcher.bm25(q, 50)]
            reciprocal_rank_fusion([dense, lexical])[:10]
            ragtune_lat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, ids = index.search(qv[None, :], 50)
            lex = [str(i) for i, _ in bare_bm25.search(q, 50)]
            reciprocal_rank_fusion([[str(i) for i in ids[0]], lex])[:10]
            bare_lat.append(time.perf_counter() - t0)
            exact = {f"{int(i) // len(texts)}-{int(i) % len(texts)}" for i in ids[0][:10]}
            overlap.append(len(exact & set(dense[:10])) / 10)
            t0 = time.perf_counter()
            lance_dense = [cid for cid, _ in searcher.store.dense_search(qv, 50)]
            lance_lat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            index.search(qv[None, :], 50)
            faiss_lat.append(time.perf_counter() - t0)
            lance_overlap.append(len(exact & set(lance_dense[:10])) / 10)
        rows.append({
            "chunks": int(len(vectors)),
            "build_s": round(build_s, 1),
            "bm25_build_s": round(bm25_build_s, 1),
            "ragtune_hybrid_p50_ms": percentile_ms(ragtune_lat, 50),
            "ragtune_hybrid_p95_ms": percentile_ms(ragtune_lat, 95),
            "bare_faiss_bm25s_p50_ms": percentile_ms(bare_lat, 50),
            "bare_faiss_bm25s_p95_ms": percentile_ms(bare_lat, 95),
            "p50_ratio_bare_over_ragtune": percentile_ms(bare_lat, 50) / percentile_ms(ragtune_lat, 50),
            "ragtune_dense_top10_overlap_with_exact": float(np.mean(overlap)),
            "lancedb_dense_p50_ms": percentile_ms(lance_lat, 50),
            "faiss_dense_p50_ms": percentile_ms(faiss_lat, 50),
            "lancedb_top10_overlap_with_exact": float(np.mean(lance_overlap)),
            "peak_rss_mb": peak_rss_mb(),
        })
        print(f"  {rows[-1]}", flush=True)
        del searcher, index, bare_bm25, vectors, all_vectors
        shutil.rmtree(ws, ignore_errors=True)
    return rows


def slice_texts(path: Path, embedder: Embedder, seen: set[str]) -> list[str]:
    """Exactly the texts ingest embeds for one file: same loader, chunker and title prefix, without the documents
    an earlier slice already indexed (ingest skips those as unchanged). Computed untimed."""
    from ragtune.corpus.chunkers import TokenizerAdapter, make_chunker

    config = IngestConfig()
    chunker = make_chunker(config.chunker, TokenizerAdapter(embedder.tokenizer, embedder.max_tokens),
                           config.chunk_size, config.overlap)
    texts = []
    for doc in load_paths([path]):
        if doc.doc_id in seen:
            continue
        seen.add(doc.doc_id)
        texts.extend(index_text(c.title, c.text) for c in chunker.chunk(doc))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="eval-split paragraphs only; sizes up to 100k")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "retrieval.json"))
    parser.add_argument("--options-only", action="store_true", help="only the advanced-retrieval options section")
    parser.add_argument("--options-workspace", help="index of the options section: reused when it exists")
    parser.add_argument("--llm-questions", type=int, default=40, help="questions the LLM options run on")
    parser.add_argument("--corpus-workspace", help="with --options-only: only compare hybrid and hop on this index "
                        "of the whole corpus")
    parser.add_argument("--links-only", action="store_true", help="only the title-link rows: choose the merge on "
                        "train-split questions (--train-workspace, and --corpus-workspace when given), then add link "
                        "and hop+link next to hybrid on --options-workspace and the whole corpus")
    parser.add_argument("--train-workspace", help="index of the first 200 train-split questions' paragraphs: reused "
                        "when it exists")
    args = parser.parse_args()
    if not HOTPOT.exists():
        sys.exit(f"{HOTPOT} is missing: this benchmark needs ../shared/data (CI has it).")
    data = json.loads(HOTPOT.read_text(encoding="utf-8"))
    eval_questions = sorted((q for q in data if is_eval(q["_id"])), key=lambda q: q["_id"])
    corpus_questions = eval_questions if args.quick else data
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-"))
    embedder = Embedder()
    out = Path(args.out)
    if args.links_only:
        result = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
        options = result.setdefault("options", {})
        section = links_section(args, data, eval_questions, embedder, tmp)
        # measured together (hybrid and hop again, same load) under "links"; the link rows also join the tables
        options["links"] = section
        for part, rows in section["eval"].items():
            options.setdefault(part, {}).update({k: v for k, v in rows.items() if "link" in k})
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        retrieval_options.print_table(result["options"])
        print(f"\nwrote {out}")
        return
    if args.options_only:
        result = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
        if args.corpus_workspace:  # only hop next to hybrid on an index of the whole corpus (no levels needed)
            corpus = args.corpus_workspace
            searchers = {"hybrid": Searcher(corpus, embedder=embedder),
                         "hybrid+hop": Searcher(corpus, SearchConfig(transform="hop"), embedder=embedder)}
            full = {name: quality(s, eval_questions, "hybrid") for name, s in searchers.items()}
            result.setdefault("options", {})["full_corpus"] = full
            result["options"]["full_corpus_chunks"] = ChunkStore(corpus).count()
            print(f"  full corpus: {result['options']['full_corpus']}", flush=True)
        else:
            kept = {k: v for k, v in result.get("options", {}).items() if k.startswith("full_corpus")}
            result["options"] = {**options_section(args, eval_questions, embedder, tmp), **kept}
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        retrieval_options.print_table(result["options"])
        print(f"\nwrote {out}")
        return
    result: dict = {"quick": args.quick, "corpus_questions": len(corpus_questions), "cpu_count": os.cpu_count()}

    # 1. Indexing throughput: the pipeline vs a bare encode of exactly the texts it embeds. The corpus is cut into
    # slices, and the two are timed slice by slice in alternating order, so drifting machine load hits both alike.
    ws = tmp / "ws"
    slices = 4 if args.quick else 8
    per = -(-len(corpus_questions) // slices)
    pipeline_s = bare_s = 0.0
    n_chunks = n_docs = 0
    seen_docs: set[str] = set()
    for i in range(slices):
        part = tmp / f"hotpot_slice{i}.json"
        part.write_text(json.dumps(corpus_questions[i * per : (i + 1) * per]), encoding="utf-8")
        timings = {}
        for step in (("pipeline", "bare") if i % 2 == 0 else ("bare", "pipeline")):
            if step == "pipeline":
                t0 = time.perf_counter()
                summary = ingest([part], ws, IngestConfig(), embedder=embedder)
                timings["pipeline"] = time.perf_counter() - t0
                n_docs += summary.new
            else:
                chunker_texts = slice_texts(part, embedder, set(seen_docs))
                t0 = time.perf_counter()
                embedder.model.encode(chunker_texts, batch_size=32, normalize_embeddings=True,
                                      show_progress_bar=False)
                timings["bare"] = time.perf_counter() - t0
                n_chunks += len(chunker_texts)
        seen_docs.update(d.doc_id for d in load_paths([part]))
        pipeline_s += timings["pipeline"]
        bare_s += timings["bare"]
        print(f"  slice {i}: ragtune {timings['pipeline']:.1f}s, bare {timings['bare']:.1f}s", flush=True)
    result["indexing"] = {
        "chunks": n_chunks, "documents": n_docs, "slices": slices,
        "ragtune_ingest_s": round(pipeline_s, 1), "bare_encode_s": round(bare_s, 1),
        "ragtune_chunks_per_s": n_chunks / pipeline_s, "bare_chunks_per_s": n_chunks / bare_s,
        "throughput_ratio": bare_s / pipeline_s,
    }
    print(f"  {result['indexing']}", flush=True)

    # 2. Quality per mode.
    searcher = Searcher(ws, embedder=embedder)
    hop_searcher = Searcher(ws, SearchConfig(transform="hop"), embedder=embedder)  # the one option without levels
    result["quality"] = {}
    for name, questions in (("eval_split", eval_questions), ("all_questions", corpus_questions)):
        if name == "all_questions" and args.quick:
            continue
        result["quality"][name] = {mode: quality(searcher, questions, mode) for mode in ("bm25", "dense", "hybrid")}
        result["quality"][name]["hybrid+hop"] = quality(hop_searcher, questions, "hybrid")
        for mode, q in result["quality"][name].items():
            print(f"  {name:14s} {mode:6s} " + " ".join(f"{k}={v:.3f}" for k, v in q.items() if k != "n"))

    # 3. Advanced retrieval options (query transforms, small-to-big, routing, LLM reranking).
    result["options"] = options_section(args, eval_questions, embedder, tmp)

    # 4. Latency at scale.
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    queries = [q["question"] for q in eval_questions[:100]]
    print("latency at scale ...", flush=True)
    result["scale"] = scale_latency(ws, sizes, queries, embedder, tmp)
    result["peak_rss_mb"] = peak_rss_mb()
    shutil.rmtree(tmp, ignore_errors=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_table(result)
    retrieval_options.print_table(result["options"])
    print(f"\nwrote {out}")


def options_section(args: argparse.Namespace, eval_questions: list[dict], embedder: Embedder, tmp: Path) -> dict:
    """Index the evaluation questions' paragraphs with sentence and summary levels (or reuse that index), then
    measure every option. The full corpus would need ~45k sentence embeddings: too slow for this CPU."""
    questions = eval_questions[:40] if args.quick else eval_questions
    ws = Path(args.options_workspace) if args.options_workspace else tmp / "options_ws"
    t0 = time.perf_counter()
    if IndexSettings.load(Workspace(ws)) is None:
        corpus = tmp / "options_corpus.json"
        corpus.write_text(json.dumps(questions), encoding="utf-8")
        ingest([corpus], ws, IngestConfig(sentences=True, summaries=True), embedder=embedder)
    levels = {name: build_level(ws, name, embedder=embedder).rows_total for name in (SENTENCES, SUMMARIES)}
    print(f"options index ready in {time.perf_counter() - t0:.0f}s: {levels}", flush=True)
    result = retrieval_options.run(ws, questions, 5 if args.quick else args.llm_questions, embedder,
                                   rerank_questions=2 if args.quick else 20)
    result["corpus"] = {"questions": len(questions), "chunks": ChunkStore(ws).count(), **levels,
                        "summaries_kind": "extractive (lead sentences, up to 60 words)"}
    return result


def links_section(args: argparse.Namespace, data: list[dict], eval_questions: list[dict], embedder: Embedder,
                  tmp: Path) -> dict:
    """Title links (`transform=link`, `hop+link`): the merge is chosen on 200 train-split questions, over their own
    paragraphs (the same kind of corpus as the options index) and over the whole corpus; then the chosen merge runs
    on the 216 evaluation questions next to hybrid and hop, on the options index and on the whole corpus."""
    train = sorted((q for q in data if not is_eval(q["_id"])), key=lambda q: q["_id"])[:200]
    train_ws = Path(args.train_workspace) if args.train_workspace else tmp / "train_ws"
    if IndexSettings.load(Workspace(train_ws)) is None:
        corpus = tmp / "train_corpus.json"
        corpus.write_text(json.dumps(train), encoding="utf-8")
        ingest([corpus], train_ws, IngestConfig(), embedder=embedder)
    corpora = {"train_split": train_ws}
    if args.corpus_workspace:
        corpora["full_corpus"] = Path(args.corpus_workspace)
    selection = retrieval_options.select_link(corpora, train, embedder)
    merge = selection["chosen_merge"]
    print(f"  chosen on train-split questions: link_merge={merge}", flush=True)
    section: dict = {"selection": selection, "eval": {}}
    rows = {"hybrid": {}, "hop": {"transform": "hop"}, "link": {"transform": "link", "link_merge": merge},
            "hop+link": {"transform": "hop+link", "link_merge": merge}}
    if not args.options_workspace:
        sys.exit("--links-only needs --options-workspace (the evaluation split's index)")
    targets = {"all": Path(args.options_workspace)}
    if args.corpus_workspace:
        targets["full_corpus"] = Path(args.corpus_workspace)
    for part, ws in targets.items():
        section["eval"][part] = got = {}
        for name, options in rows.items():
            s = Searcher(ws, SearchConfig(**options), embedder=embedder)
            s.search("warm-up", k=10)
            got[name] = retrieval_options.measure(lambda q, s=s: s.search(q, k=10), eval_questions)
            print(f"  eval {part:12s} {name:10s} " + " ".join(f"{k}={v:.3f}" for k, v in got[name].items()
                                                           if isinstance(v, float)), flush=True)
    return section


def print_table(result: dict) -> None:
    ix = result["indexing"]
    print(f"\nIndexing {ix['chunks']} chunks: ragtune {ix['ragtune_ingest_s']}s, bare encode {ix['bare_encode_s']}s, "
          f"throughput ratio {ix['throughput_ratio']:.2f}")
    for name, modes in result["quality"].items():
        print(f"\n{name} (n={next(iter(modes.values()))['n']})")
        print("| mode | R@2 | R@5 | R@10 | all-gold@10 | MRR | p50 ms |")
        print("|---|---|---|---|---|---|---|")
        for mode, q in modes.items():
            print(f"| {mode} | {q['recall@2']:.3f} | {q['recall@5']:.3f} | {q['recall@10']:.3f} | "
                  f"{q['all_gold@10']:.3f} | {q['mrr']:.3f} | {q['latency_p50_ms']:.1f} |")
    print("\n| chunks | ragtune hybrid p50 / p95 ms | bare FAISS+bm25s p50 / p95 ms | ratio (bare/ragtune) | "
          "LanceDB dense p50 ms | FAISS dense p50 ms | LanceDB top-10 = exact |")
    print("|---|---|---|---|---|---|---|")
    for r in result["scale"]:
        print(f"| {r['chunks']:,} | {r['ragtune_hybrid_p50_ms']:.1f} / {r['ragtune_hybrid_p95_ms']:.1f} | "
              f"{r['bare_faiss_bm25s_p50_ms']:.1f} / {r['bare_faiss_bm25s_p95_ms']:.1f} | "
              f"{r['p50_ratio_bare_over_ragtune']:.2f} | {r['lancedb_dense_p50_ms']:.1f} | "
              f"{r['faiss_dense_p50_ms']:.1f} | {r['lancedb_top10_overlap_with_exact']:.3f} |")
    print(f"\npeak RSS {result['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
