"""Serving under load, per engine: N concurrent clients for a fixed window against a real server process on loopback.

    python benchmarks/serve.py                 # 8 and 32 clients per system; answers of up to 160 tokens (90 s
                                               # windows), then of up to 32 (40 s windows)
    python benchmarks/serve.py --quick         # 8 clients x 20 s, 16 new tokens (a smoke run)
    python benchmarks/serve.py --systems ragtune-llamacpp,wrapper --clients 8 --seconds 60
    python benchmarks/serve.py --systems ragtune-llamacpp --slots 2 --quick --out /tmp/s2.json   # a slot count

Systems (each in its own fresh process, one after the other, never two at once, on the same questions):
- `wrapper`: what a user would otherwise write: ragtune's Searcher, the same RAG prompt and the bundled model
  (transformers, fp32) behind a hand-written FastAPI route that answers one request at a time
  (`llm.generate([messages])` under a lock). No streaming: its time to first token is its latency.
- `wrapper-llamacpp`: the same wrapper over the llama.cpp engine (`load_llm(engine="llamacpp", dtype=...)`, one
  sequence at a time): what batching adds, with the engine and its weights held equal.
- `ragtune-llamacpp`: `ragtune serve --engine llamacpp --slots N --dtype D` (`--slots`, default the engine's
  `DEFAULT_SLOTS`, 4; `--llamacpp-dtype`, default auto: the bundled weights re-encoded at bf16 on a CPU with native
  bf16, else f16, for both llama.cpp systems): continuous batching over llama.cpp's parallel slots, one prompt read
  at a time (in chunks, between the other slots' tokens), the other clients queued in order; streaming.
- `ragtune-transformers`: `ragtune serve` on transformers (request batching through `llm.server.Batcher`).

Each client loops until the window closes: ask a HotpotQA question (k=5 chunks, semantic cache off, so every request
runs retrieval + prefill + decode; ragtune systems stream and the first content piece gives the time to first
token). A request still running when the window closes is abandoned (counted as `unfinished`, its latency unknown):
requests/s = requests completed inside the window / window. Reported per answer cap, system and client count:
requests, errors, unfinished, requests/s, p50 / p95 latency and time to first token. `best_rps_ratio`: the best
ragtune engine's requests/s over the wrapper's at 8 clients, for the first answer cap (160 tokens: the RAFT answer
format, quotes then `<ANSWER>:`, as eval caps it; most of the bundled base model's answers end by themselves well
before it); `best_rps_ratio_by_max_tokens` gives it for each cap (32: short answers, where reading the prompt
is most of a request). Results: benchmarks/results/serve.json (serve_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
SYSTEMS = ("wrapper", "wrapper-llamacpp", "ragtune-llamacpp", "ragtune-transformers")
N_QUESTIONS, K = 30, 5


def bench_workspace(workdir: Path, n_questions: int = N_QUESTIONS):
    """The first `n_questions` records of examples/hotpotqa_mini ingested under tenant "bench" into WORKDIR/ws<N>
    (ingest is incremental: a rerun, or another benchmark on the same prompts, reuses it): (workspace, records,
    ingest summary)."""
    from ragtune.config import IngestConfig
    from ragtune.index.ingest import ingest

    data = json.loads(DATA.read_text(encoding="utf-8"))[:n_questions]
    workdir.mkdir(parents=True, exist_ok=True)
    subset = workdir / f"hotpot{n_questions}.json"
    subset.write_text(json.dumps(data), encoding="utf-8")
    ws = workdir / f"ws{n_questions}"
    return ws, data, ingest([subset], ws, IngestConfig(tenant="bench"))


def rag_messages(searcher, question: str) -> list:
    """The conversation every system answers: the question with its top K chunks, in ragtune's RAG prompt."""
    from ragtune.prompts import build_messages

    return build_messages(question, searcher.search(question, k=K, filters={"tenant": "bench"}))
DEFAULT_SYSTEMS = ("wrapper", "wrapper-llamacpp", "ragtune-llamacpp")


def baseline_app(workspace: str, max_tokens: int, engine: str = "transformers", dtype: str | None = None):
    """The hand-written wrapper: retrieve, prompt, generate, one request at a time."""
    from fastapi import FastAPI

    from ragtune.llm import GenerationConfig, load_llm
    from ragtune.retrieve.search import Searcher

    llm, searcher = load_llm(None, engine=engine, dtype=dtype), Searcher(workspace)
    searcher.search("warm up", k=K, filters={"tenant": "bench"})
    lock = threading.Lock()
    inflight = [0]
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "inflight": inflight[0]}

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        question = body["messages"][-1]["content"]
        inflight[0] += 1
        try:
            with lock:
                messages = rag_messages(searcher, question)
                config = GenerationConfig(max_new_tokens=body.get("max_tokens") or max_tokens)
                gen = llm.generate([messages], config)[0]
        finally:
            inflight[0] -= 1
        return {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": "baseline",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                             "finish_reason": gen.finish_reason}],
                "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                          "total_tokens": gen.prompt_tokens + gen.completion_tokens}}

    return app


class BaselineServer:
    """This file run with --baseline-server, as a child process (same shape as serve_support.Server)."""

    def __init__(self, workspace: Path, max_tokens: int, engine: str, dtype: str | None = None):
        import httpx
        from serve_support import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", "--workspace", str(workspace),
                                      "--port", str(self.port), "--max-tokens", str(max_tokens), "--engine", engine,
                                      *(["--dtype", dtype] if dtype else [])])
        for _ in range(1200):
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("baseline server did not start")

    def stop(self) -> None:
        # uvicorn's graceful shutdown waits for in-flight requests: with 31 clients queued behind one lock that is
        # minutes, so a server that does not exit promptly is killed (the window is over; nothing is measured now)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _one(url: str, key: str, question: str, max_tokens: int, stream: bool, timeout: float) -> tuple[float, float]:
    """(latency, time to first content) of one chat request; raises on an error or when `timeout` passes."""
    import httpx

    body = {"model": "m", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "stream": stream, "ragtune": {"cache": False}}
    headers = {"Authorization": f"Bearer {key}"}
    t0 = time.perf_counter()
    if not stream:
        r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout)
        r.raise_for_status()
        r.json()["choices"][0]["message"]["content"]  # noqa: B018 - a well-formed answer
        latency = time.perf_counter() - t0
        return latency, latency
    first = None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first is None and line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                first = time.perf_counter() - t0
            if line.startswith("data: {") and '"error"' in line[:20]:
                raise RuntimeError(line[:200])
            if line == "data: [DONE]":
                break
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("window closed")
    latency = time.perf_counter() - t0
    return latency, first if first is not None else latency


def load(url: str, key: str, questions: list[str], clients: int, seconds: float, max_tokens: int,
         stream: bool) -> dict:
    import httpx

    latencies: list[float] = []
    ttfts: list[float] = []
    errors: list[str] = []
    unfinished = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(cid: int) -> None:
        i = cid
        while (left := stop_at - time.monotonic()) > 0:
            q = questions[i % len(questions)]
            i += clients
            try:
                latency, ttft = _one(url, key, q, max_tokens, stream, timeout=left)
                with lock:
                    latencies.append(latency)
                    ttfts.append(ttft)
            except (httpx.TimeoutException, TimeoutError):
                with lock:
                    unfinished[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted, not raised
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat, first = sorted(latencies), sorted(ttfts)

    def pct(xs: list[float], q: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None

    return {"clients": clients, "requests": len(lat), "errors": len(errors), "error_samples": errors[:3],
            "unfinished": unfinished[0], "window_s": seconds, "rps": round(len(lat) / seconds, 4),
            "p50_s": round(statistics.median(lat), 3) if lat else None, "p95_s": pct(lat, 0.95),
            "ttft_p50_s": round(statistics.median(first), 3) if first else None, "ttft_p95_s": pct(first, 0.95)}


def wait_idle(url: str, limit_s: float = 600.0) -> float:
    """Seconds until the server has nothing left from the last window (a wrapper finishes what clients abandoned;
    ragtune cancels it): the next window starts on an idle server."""
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        state = httpx.get(url + "/health", timeout=10).json()
        if not state.get("inflight") and not state.get("queued") and state.get("busy_s") is None:
            return round(time.monotonic() - t0, 1)
        time.sleep(1.0)
    raise RuntimeError(f"{url} still busy after {limit_s:.0f} s")


def start(system: str, ws: Path, slots: int, max_tokens: int, llamacpp_dtype: str | None):
    """One system's server; both llama.cpp systems run the same GGUF type (`llamacpp_dtype`), so the two differ by
    batching only, and the transformers wrapper runs the library default (fp32), as a hand-written one would."""
    from serve_support import Server

    if system == "wrapper-llamacpp":
        return BaselineServer(ws, max_tokens, "llamacpp", llamacpp_dtype)
    if system == "wrapper":
        return BaselineServer(ws, max_tokens, "transformers")
    args = ["--max-tokens", str(max_tokens), "--no-cache"]
    if system == "ragtune-llamacpp":
        args += ["--engine", "llamacpp", "--slots", str(slots), "--slot-ctx", "2048",
                 *(["--dtype", llamacpp_dtype] if llamacpp_dtype else [])]
    return Server(ws, *args, timeout=1200.0)


def summarise(results: dict[str, dict[str, dict]], systems: list[str], client_counts: list[int]) -> dict:
    """Ratios of one answer length: each ragtune system over each wrapper per client count, and `best_rps_ratio`
    (the best ragtune system's requests/s over the transformers wrapper's at 8 clients)."""
    ratios: dict[str, float | None] = {}
    for clients in map(str, client_counts):
        for wrapper in ("wrapper", "wrapper-llamacpp"):
            base = results.get(wrapper, {}).get(clients, {}).get("rps")
            for system in (s for s in systems if s.startswith("ragtune")):
                rps = results[system][clients]["rps"]
                ratios[f"{system}_over_{wrapper}@{clients}"] = round(rps / base, 2) if base else None
    wrapper8 = results.get("wrapper", {}).get("8", {}).get("rps")
    best8 = max((results[s]["8"]["rps"] for s in systems if s.startswith("ragtune") and "8" in results.get(s, {})),
                default=None)
    best = round(best8 / wrapper8, 2) if best8 is not None and wrapper8 else None
    return {"results": results, "ratios": ratios, "best_rps_ratio": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 clients x 20 s, 16 tokens")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    parser.add_argument("--clients", default=None, help="comma list (default 8,32; --quick: 8)")
    parser.add_argument("--seconds", type=float, help="window per row (default 40 s for answers of up to 32 tokens, "
                        "90 s for longer ones; --quick 20)")
    parser.add_argument("--max-tokens", default=None, help="comma list of answer caps (default 160,32: the RAFT "
                        "answer format's quotes + answer, as eval caps it, then short answers; --quick 16); the first "
                        "gives the top-level results and best_rps_ratio")
    parser.add_argument("--slots", type=int, help="ragtune-llamacpp's slots (default: the engine's DEFAULT_SLOTS)")
    parser.add_argument("--llamacpp-dtype", default="auto", help="--dtype of both llama.cpp systems (auto: bf16 GGUF "
                        "on a CPU with native bf16, else f16; 'none' for the exact f16 default)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ragtune-bench-serve"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="transformers", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        import uvicorn

        uvicorn.run(baseline_app(str(args.workspace), int(args.max_tokens), args.engine, args.dtype), host="127.0.0.1",
                    port=args.port, log_level="warning")
        return

    from ragtune.llm.llamacpp_backend import gguf_type_for
    from ragtune.llm.llamacpp_slots import DEFAULT_SLOTS
    from ragtune.serve.tenants import TenantStore

    quick = args.quick
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; expected {', '.join(SYSTEMS)}")
    client_counts = [int(c) for c in (args.clients or ("8" if quick else "8,32")).split(",")]
    lengths = [int(n) for n in (args.max_tokens or ("16" if quick else "160,32")).split(",")]

    def window_for(n_tokens: int) -> float:
        """Long answers need a longer window for the same count of finished requests."""
        return args.seconds or (20.0 if quick else 40.0 if n_tokens <= 32 else 90.0)

    slots = args.slots or DEFAULT_SLOTS
    llamacpp_dtype = None if args.llamacpp_dtype.lower() == "none" else args.llamacpp_dtype
    gguf_type = gguf_type_for(llamacpp_dtype)
    out = args.out or ROOT / "benchmarks" / "results" / ("serve_quick.json" if quick else "serve.json")

    t0 = time.perf_counter()
    ws, data, summary = bench_workspace(args.workdir)
    questions = [q["question"] for q in data]
    print(f"workspace: {summary.chunks_total} chunks ({time.perf_counter() - t0:.0f}s)", flush=True)
    key = TenantStore(ws).add("bench")

    by_length: dict[str, dict[str, dict[str, dict]]] = {str(n): {} for n in lengths}
    for system in systems:
        started = time.perf_counter()
        server = start(system, ws, slots, max(lengths), llamacpp_dtype)
        up = round(time.perf_counter() - started, 1)
        try:
            for n_tokens in lengths:
                window = window_for(n_tokens)
                for clients in client_counts:
                    idle = wait_idle(server.url)
                    print(f"{system}: {clients} clients x {window:.0f}s, max_tokens {n_tokens} (started in {up:.0f}s, "
                          f"idle after {idle}s)", flush=True)
                    row = load(server.url, key, questions, clients, window, n_tokens,
                               stream=system.startswith("ragtune"))
                    by_length[str(n_tokens)].setdefault(system, {})[str(clients)] = {**row, "startup_s": up}
                    print(f"  {row['requests']} done, {row['unfinished']} unfinished, {row['errors']} errors, "
                          f"{row['rps']} req/s, p50 {row['p50_s']} s, ttft p50 {row['ttft_p50_s']} s", flush=True)
        finally:
            server.stop()

    sections = {n: summarise(rows, systems, client_counts) for n, rows in by_length.items()}
    for n, section in sections.items():
        print(f"\nmax_tokens {n}, {window_for(int(n)):.0f} s windows")
        print(f"{'system':<22}{'clients':>8}{'done':>6}{'unfin':>7}{'err':>5}{'req/s':>9}{'p50 s':>8}{'p95 s':>8}"
              f"{'ttft50':>8}")
        for system, rows in section["results"].items():
            for clients, x in rows.items():
                print(f"{system:<22}{clients:>8}{x['requests']:>6}{x['unfinished']:>7}{x['errors']:>5}{x['rps']:>9}"
                      f"{x['p50_s']!s:>8}{x['p95_s']!s:>8}{x['ttft_p50_s']!s:>8}")
        print(f"best_rps_ratio (best ragtune engine / wrapper, 8 clients): {section['best_rps_ratio']}")
    head = sections[str(lengths[0])]
    results, ratios, best_rps_ratio = head["results"], head["ratios"], head["best_rps_ratio"]
    meta = {"quick": quick, "clients": client_counts, "window_s": window_for(lengths[0]), "max_tokens": lengths[0],
            "lengths": lengths, "windows_s": {str(n): window_for(n) for n in lengths},
            "questions": len(data), "chunks": summary.chunks_total, "k": K, "systems": systems, "slots": slots,
            "model": f"smollm2-135m-instruct (bundled): transformers fp32; llama.cpp the same weights at {gguf_type}",
            "llamacpp_dtype": llamacpp_dtype, "gguf_type": gguf_type,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS')} (every server), shared with other jobs",
            "python": platform.python_version(), "time": time.time()}
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "results": results, "ratios": ratios, "best_rps_ratio": best_rps_ratio,
           "by_max_tokens": sections,
           "best_rps_ratio_by_max_tokens": {n: x["best_rps_ratio"] for n, x in sections.items()}}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    if any(x["errors"] for rows_by in by_length.values() for rows in rows_by.values() for x in rows.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
