"""Serving under load: N concurrent clients for a bounded time against a real `ragtune serve` process on loopback.

    OMP_NUM_THREADS=1 python benchmarks/serve.py            # 8 clients x 60 s per system, 16 new tokens
    OMP_NUM_THREADS=1 python benchmarks/serve.py --quick    # 4 clients x 20 s, 8 new tokens (a smoke run)

Each client loops until the time is up: ask a HotpotQA question (official `openai` client, semantic cache off so
every request runs retrieval + generation), then, on ragtune, post feedback on the answer. Reported per system:
requests, errors, p50 / p95 latency, throughput; for ragtune also feedback rows sent vs rows found in SQLite after.

Baseline (what a user would otherwise write): the same pipeline (ragtune's Searcher, the same RAG prompt, the same
model) behind a hand-written FastAPI endpoint that answers each request on its own (`llm.generate([messages])` in a
sync route, so one request at a time on the model). That isolates what ragtune's server adds (request batching
through `llm.server.Batcher`, async retrieval) from the model and retrieval costs both share. The two servers run one
after the other, never at once, on the same questions. Results: benchmarks/results/serve.json (serve_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "hotpotqa_mini" / "hotpotqa_mini.json"
sys.path.insert(0, str(ROOT / "tests"))


def baseline_app(workspace: str, max_tokens: int):
    """The hand-written wrapper: retrieve, prompt, generate, one request at a time."""
    from fastapi import FastAPI

    from ragtune.llm import GenerationConfig, load_llm
    from ragtune.prompts import build_messages
    from ragtune.retrieve.search import Searcher

    llm, searcher = load_llm(None), Searcher(workspace)
    searcher.search("warm up", k=5, filters={"tenant": "bench"})
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        question = body["messages"][-1]["content"]
        with lock:
            hits = searcher.search(question, k=5, filters={"tenant": "bench"})
        messages = build_messages(question, hits)
        gen = llm.generate([messages], GenerationConfig(max_new_tokens=body.get("max_tokens") or max_tokens))[0]
        return {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": "baseline",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                             "finish_reason": gen.finish_reason}],
                "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                          "total_tokens": gen.prompt_tokens + gen.completion_tokens}}

    return app


class BaselineServer:
    """This file run with --baseline-server, as a child process (same shape as serve_support.Server)."""

    def __init__(self, workspace: Path, max_tokens: int):
        import httpx
        from serve_support import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", "--workspace", str(workspace),
                                      "--port", str(self.port), "--max-tokens", str(max_tokens)])
        for _ in range(360):
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("baseline server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load(url: str, key: str, questions: list[str], clients: int, seconds: float, max_tokens: int,
         feedback: bool) -> dict:
    import openai

    latencies: list[float] = []
    errors: list[str] = []
    sent = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(cid: int) -> None:
        import httpx

        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)
        i = cid
        while time.monotonic() < stop_at:
            q = questions[i % len(questions)]
            i += clients
            t0 = time.perf_counter()
            try:
                r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": q}],
                                              max_tokens=max_tokens, extra_body={"ragtune": {"cache": False}})
                with lock:
                    latencies.append(time.perf_counter() - t0)
                if feedback:
                    f = httpx.post(url + "/v1/feedback", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                                   json={"response_id": r.id, "rating": "up" if i % 2 else "down"})
                    f.raise_for_status()
                    with lock:
                        sent[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted, not raised
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "requests": len(lat), "errors": len(errors), "error_samples": errors[:3], "wall_s": round(wall, 1),
        "p50_s": round(statistics.median(lat), 3) if lat else None,
        "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
        "throughput_rps": round(len(lat) / wall, 3), "feedback_sent": sent[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 clients x 20 s, 8 tokens, 10-question corpus")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ragtune-bench-serve"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        import uvicorn

        uvicorn.run(baseline_app(str(args.workspace), args.max_tokens), host="127.0.0.1", port=args.port,
                    log_level="warning")
        return

    from serve_support import Server

    from ragtune.config import IngestConfig
    from ragtune.index.ingest import ingest
    from ragtune.serve.tenants import TenantStore

    quick = args.quick
    clients = args.clients or (4 if quick else 8)
    seconds = args.seconds or (20.0 if quick else 60.0)
    max_tokens = args.max_tokens or (8 if quick else 16)
    n_questions = 10 if quick else 30
    out = args.out or ROOT / "benchmarks" / "results" / ("serve_quick.json" if quick else "serve.json")

    data = json.loads(DATA.read_text(encoding="utf-8"))[:n_questions]
    questions = [q["question"] for q in data]
    args.workdir.mkdir(parents=True, exist_ok=True)
    subset = args.workdir / f"hotpot{n_questions}.json"
    subset.write_text(json.dumps(data), encoding="utf-8")
    ws = args.workdir / f"ws{n_questions}"
    t0 = time.perf_counter()
    summary = ingest([subset], ws, IngestConfig(tenant="bench"))
    print(f"workspace: {summary.chunks_total} chunks ({time.perf_counter() - t0:.0f}s)", flush=True)
    key = TenantStore(ws).add("bench")
    db = ws / "serve" / "feedback.sqlite3"
    before = sqlite3.connect(db).execute("SELECT COUNT(*) FROM feedback").fetchone()[0] if db.exists() else 0

    results: dict[str, dict] = {}
    server = Server(ws, "--max-tokens", str(max_tokens), "--no-cache")
    try:
        print(f"ragtune serve: {clients} clients x {seconds:.0f}s ...", flush=True)
        results["ragtune"] = load(server.url, key, questions, clients, seconds, max_tokens, feedback=True)
    finally:
        server.stop()
    stored = sqlite3.connect(db).execute("SELECT COUNT(*) FROM feedback").fetchone()[0] - before
    results["ragtune"]["feedback_stored"] = stored
    results["ragtune"]["feedback_lost"] = results["ragtune"]["feedback_sent"] - stored
    baseline = BaselineServer(ws, max_tokens)
    try:
        print(f"baseline (one request at a time): {clients} clients x {seconds:.0f}s ...", flush=True)
        results["baseline"] = load(baseline.url, key, questions, clients, seconds, max_tokens, feedback=False)
    finally:
        baseline.stop()

    r, b = results["ragtune"], results["baseline"]
    ratios = {
        "p50_latency_baseline_over_ragtune": round(b["p50_s"] / r["p50_s"], 2) if r["p50_s"] and b["p50_s"] else None,
        "throughput_ragtune_over_baseline": round(r["throughput_rps"] / b["throughput_rps"], 2)
        if b["throughput_rps"] else None,
    }
    header = f"{'system':<34}{'requests':>9}{'errors':>8}{'p50 s':>8}{'p95 s':>8}{'req/s':>8}"
    print(f"\n{header}{'feedback sent/stored':>22}")
    for name, label in (("ragtune", "ragtune serve (batched)"), ("baseline", "hand-written FastAPI (1 at a time)")):
        x = results[name]
        fb = f"{x['feedback_sent']}/{x.get('feedback_stored', '-')}" if name == "ragtune" else "-"
        print(f"{label:<34}{x['requests']:>9}{x['errors']:>8}{x['p50_s']:>8}{x['p95_s']:>8}{x['throughput_rps']:>8}"
              f"{fb:>22}")
    print(f"median latency: baseline / ragtune = {ratios['p50_latency_baseline_over_ragtune']}x; "
          f"throughput ragtune / baseline = {ratios['throughput_ragtune_over_baseline']}x")
    meta = {"quick": quick, "clients": clients, "seconds": seconds, "max_tokens": max_tokens,
            "questions": n_questions, "chunks": summary.chunks_total, "model": "smollm2-135m-instruct (bundled, fp32)",
            "k": 5, "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS')}", "python": platform.python_version(), "time": time.time()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2) + "\n")
    print(f"wrote {out}")
    if r["errors"] or r["feedback_lost"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
