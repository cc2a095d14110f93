"""Robustness under attack, garbage and crashes: everything issue 16 asks to hold at zero, measured on real processes.

    OMP_NUM_THREADS=1 python benchmarks/robustness.py            # fuzz 240 s, 200 feedback posts, 10-minute soak
    OMP_NUM_THREADS=1 python benchmarks/robustness.py --quick    # fuzz 60 s, 60 posts, 90-second soak (< 10 min)

Sections (each with the number that must stay 0):
- tenant attacks: tests/tenant_attacks.py's suite (store, every search option, a real server) -> `leaks`;
- fuzzing: tests/serve_fuzz_support.py against a real `ragtune serve` from its own OpenAPI schema -> 5xx;
- injection screening: `guardrails.injection_benchmark` on tests/data/injection_cases.jsonl, per split (rates, no
  zero target: a regression shows as a drop);
- hostile ingest: benchmarks/hostile_ingest.py's folder of every case that once crashed ingest -> `crashed`;
- kill -9 then resume, per target, compared with an uninterrupted run: `ragtune ingest` (chunk ids and texts),
  `ragtune synth raft` over the rule-based fake teacher served on HTTP (example groups), `ragtune train sft` (every
  planned step's loss in loss_curve.json, once) and feedback (a real server killed mid-stream, restarted, the
  client retrying every post that got no 200 with the same Idempotency-Key; rows in feedback.sqlite3) -> `lost`,
  `duplicated`;
- soak: 8 clients on chat completions against a real server -> errors, p50 / p95, server RSS growth.

Keys are made with the real `ragtune tenants add`. Results: benchmarks/results/robustness.json (robustness_quick.json);
exit status 1 when any zero target is not zero.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
INJECTION_CASES = ROOT / "tests" / "data" / "injection_cases.jsonl"
HOTPOT_MINI = ROOT / "examples" / "hotpotqa_mini" / "hotpotqa_mini.json"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "COLUMNS": "200"}
SERVE_YAML = ("serve:\n  default_max_tokens: 2\n  limits:\n    max_tokens: 8\n    generation_timeout_s: 60\n")


def ragtune(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in its own process."""
    return subprocess.run([sys.executable, "-m", "ragtune", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ragtune", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)


def kill9(proc: subprocess.Popen) -> bool:
    """SIGKILL `proc`; True when it was still running (so the kill interrupted something)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return alive


def tenant_key(ws: Path, name: str, admin: bool = False) -> str:
    r = ragtune("tenants", "add", name, "--workspace", str(ws), *(["--admin"] if admin else []), timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"tenants add failed: {r.stderr[-1000:]}")
    return r.stdout.split()[-1]


# ---- tenant attacks, injection, hostile ingest -----------------------------------------------------------------------


def tenant_attacks() -> dict[str, Any]:
    from tenant_attacks import run_attacks

    return run_attacks()


def injection() -> dict[str, Any]:
    from ragtune.serve.guardrails import injection_benchmark

    keep = ("cases", "injections", "benign", "detected", "false_positives", "detection_rate", "false_positive_rate")
    splits = sorted({json.loads(line).get("split") or "" for line in INJECTION_CASES.read_text().splitlines()
                     if line.strip()})
    out = {k: v for k, v in injection_benchmark(INJECTION_CASES).items() if k in keep}
    out["by_split"] = {s: {k: v for k, v in injection_benchmark(INJECTION_CASES, split=s).items() if k in keep}
                       for s in splits if s}
    return out


def hostile(workdir: Path) -> dict[str, Any]:
    from hostile_ingest import run

    return run(workdir / "hostile")


# ---- kill -9 then resume ---------------------------------------------------------------------------------------------

TOPICS = ["granite quarries", "river deltas", "alpine glaciers", "coral reefs", "desert dunes", "volcanic islands",
          "boreal forests", "salt marshes", "limestone caves", "tidal flats"]


def write_corpus(folder: Path, files: int, sentences: int) -> None:
    """`files` small text files of plain sentences (six words or more each, so the fake teacher can quote them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        topic = TOPICS[i % len(TOPICS)]
        lines = [f"Field note {i}.{j} records that the {topic} of site {i} changed by {j * 7 % 23} metres "
                 f"during survey season {j}." for j in range(sentences)]
        (folder / f"note_{i:02d}.txt").write_text(" ".join(lines) + "\n", encoding="utf-8")


def _chunks(ws: Path) -> list[tuple[str, str]]:
    from ragtune.index.store import ChunkStore

    try:
        t = ChunkStore(ws).scan(["chunk_id", "text"])
    except Exception:  # noqa: BLE001 - no table yet, or read mid-commit
        return []
    return list(zip(t["chunk_id"].to_pylist(), t["text"].to_pylist(), strict=True))


def compare(expected: list[Any], got: list[Any]) -> dict[str, int]:
    """Records of an uninterrupted run vs the killed-and-resumed one: lost = expected ones missing, duplicated = any
    record present more often than once, extra = records the reference does not have."""
    e, g = Counter(expected), Counter(got)
    return {"expected": len(expected), "got": len(got), "lost": sum((e - g).values()),
            "duplicated": sum(n - 1 for n in g.values() if n > 1), "extra": sum((g - e).values())}


def kill_ingest(workdir: Path) -> tuple[dict[str, Any], Path]:
    folder = workdir / "notes"
    write_corpus(folder, files=30, sentences=16)
    opts = ["--chunk-size", "64", "--commit-every", "16", "--batch-size", "8"]
    ref, ws = workdir / "ws-ingest-ref", workdir / "ws-ingest-killed"
    r = ragtune("ingest", str(folder), "--workspace", str(ref), *opts)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    expected = _chunks(ref)
    proc = popen("ingest", str(folder), "--workspace", str(ws), *opts)
    seen = 0
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        seen = len(_chunks(ws))
        if seen:
            break
        time.sleep(0.2)
    interrupted = kill9(proc)
    at_kill = len(_chunks(ws))
    r = ragtune("ingest", str(folder), "--workspace", str(ws), *opts)
    out = {**compare(expected, _chunks(ws)), "interrupted": interrupted and at_kill < len(expected),
           "chunks_at_kill": at_kill, "resume_exit": r.returncode}
    return out, ref


def _groups(path: Path) -> list[str]:
    from ragtune.synth.store import iter_groups

    return [json.dumps(g, sort_keys=True) for g in iter_groups(path)]


def kill_synth(workdir: Path, ws_source: Path) -> dict[str, Any]:
    from serve_support import free_port

    port = free_port()
    teacher = subprocess.Popen([sys.executable, "-m", "ragtune.synth.fake_teacher", "--port", str(port),
                                "--latency-ms", "250"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        import httpx

        for _ in range(300):
            try:
                httpx.get(url + "/models", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        ref, ws = workdir / "ws-synth-ref", workdir / "ws-synth-killed"
        for dest in (ref, ws):
            shutil.copytree(ws_source, dest)
        cmd = ["synth", "raft", "--teacher", "openai:fake", "--base-url", url, "--api-key", "k", "--concurrency",
               "2", "--seed", "11", "--questions-per-chunk", "2", "--limit", "16"]
        r = ragtune(*cmd, "--workspace", str(ref))
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        expected = _groups(ref / "synth" / "raft.jsonl")
        out_file = ws / "synth" / "raft.jsonl"
        proc = popen(*cmd, "--workspace", str(ws))
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if len(_groups(out_file)) >= 2:
                break
            time.sleep(0.05)
        interrupted = kill9(proc)
        at_kill = len(_groups(out_file))
        r = ragtune(*cmd, "--workspace", str(ws))
        got = _groups(out_file)
        ids = [json.loads(g)["group_id"] for g in got]
        return {**compare(expected, got), "duplicated_ids": len(ids) - len(set(ids)),
                "interrupted": interrupted and at_kill < len(expected), "groups_at_kill": at_kill,
                "identical_file": (ref / "synth" / "raft.jsonl").read_text() == out_file.read_text(),
                "resume_exit": r.returncode}
    finally:
        teacher.kill()
        teacher.wait()


def _trimmed_hotpot(n: int) -> list[dict]:
    """The bundled HotpotQA sample cut after each paragraph's last supporting sentence: short rows, fast steps."""
    data = json.loads(HOTPOT_MINI.read_text(encoding="utf-8"))[:n]
    for ex in data:
        last: dict[str, int] = {}
        for title, idx in ex["supporting_facts"]:
            last[title] = max(last.get(title, 0), idx)
        ex["context"] = [[t, s[: last.get(t, 0) + 1]] for t, s in ex["context"]]
    return data


def _curve(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "loss_curve.json"
    return json.loads(path.read_text()) if path.exists() else {"steps": 0, "history": []}


def kill_train(workdir: Path, steps: int) -> dict[str, Any]:
    ws = workdir / "ws-train"
    ws.mkdir(parents=True, exist_ok=True)
    source = ws / "hotpot_trimmed.json"
    source.write_text(json.dumps(_trimmed_hotpot(16)), encoding="utf-8")
    r = ragtune("synth", "from-qa", "hotpotqa", str(source), "--workspace", str(ws), "--cot", "evidence-short",
                "-k", "1")
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    common = ["train", "sft", "--workspace", str(ws), "--max-steps", str(steps), "--save-steps", "1", "--batch-size",
              "1", "--grad-accum", "1", "--max-length", "512", "--seed", "0"]
    r = ragtune(*common, "--name", "ref")
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    ref = _curve(ws / "train" / "ref")
    run_dir = ws / "train" / "killed"
    proc = popen(*common, "--name", "killed")
    kill_after = max(1, steps // 2)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if (run_dir / "checkpoints" / f"checkpoint-{kill_after}" / "trainer_state.json").exists():  # complete
            break
        time.sleep(0.2)
    interrupted = kill9(proc)
    saved = sorted(int(p.name.rsplit("-", 1)[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    r = ragtune(*common, "--name", "killed", "--resume", "--json")
    summary = json.loads(r.stdout) if r.returncode == 0 else {}
    curve = _curve(run_dir)
    logged = Counter(int(h["step"]) for h in curve.get("history", []))
    planned = range(1, steps + 1)
    ref_loss = {int(h["step"]): h["loss"] for h in ref.get("history", [])}
    got_loss = {int(h["step"]): h["loss"] for h in curve.get("history", [])}
    shared = sorted(set(ref_loss) & set(got_loss))
    return {"planned_steps": steps, "final_steps": summary.get("steps"), "resumed_from": summary.get("resumed_from"),
            "interrupted": interrupted, "checkpoints_at_kill": saved, "resume_exit": r.returncode,
            "resume_stderr_tail": r.stderr[-500:] if r.returncode else "",
            "expected": steps, "got": sum(logged.values()),
            "lost": sum(1 for s in planned if logged[s] == 0) + int(summary.get("steps") != steps),
            "duplicated": sum(n - 1 for n in logged.values() if n > 1),
            "missing_steps": [s for s in planned if logged[s] == 0],
            "ref_steps_logged": sorted(ref_loss),
            "max_abs_loss_diff": round(max((abs(ref_loss[s] - got_loss[s]) for s in shared), default=0.0), 6)}


def kill_feedback(ws: Path, posts: int, clients: int = 4) -> dict[str, Any]:
    """Clients post feedback with Idempotency-Keys; the server is SIGKILLed after a third are acknowledged and
    restarted on a new port; every post without a 200 is retried (same key) until it gets one."""
    import httpx
    from serve_support import Server

    key = tenant_key(ws, "fbkill")
    state: dict[str, Any] = {"url": None}
    acked: set[str] = set()
    retries = [0]
    errors: list[str] = []
    lock = threading.Lock()
    keys = [f"kill9-{i:05d}" for i in range(posts)]
    stop_at = time.monotonic() + 600

    def client(cid: int) -> None:
        with httpx.Client(timeout=30) as c:
            for k in keys[cid::clients]:
                while time.monotonic() < stop_at:
                    url = state["url"]
                    try:
                        r = c.post(url + "/v1/feedback", headers={"Authorization": f"Bearer {key}",
                                                                  "Idempotency-Key": k},
                                   json={"question": f"question {k}", "answer": f"answer {k}", "rating": "up"})
                        if r.status_code == 200:
                            with lock:
                                acked.add(k)
                            break
                        with lock:
                            errors.append(f"{r.status_code}: {r.text[:100]}")
                    except httpx.HTTPError as exc:
                        with lock:
                            errors.append(type(exc).__name__)
                    with lock:
                        retries[0] += 1
                    time.sleep(0.2)

    server = Server(ws, "--config", str(_serve_config(ws)))
    state["url"] = server.url
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    while len(acked) < posts // 3 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    interrupted = kill9(server.proc)
    acked_at_kill = len(acked)
    server = Server(ws, "--config", str(_serve_config(ws)))
    state["url"] = server.url
    for t in threads:
        t.join()
    server.stop()
    db = sqlite3.connect(ws / "serve" / "feedback.sqlite3")
    rows = db.execute("SELECT idempotency_key FROM feedback WHERE tenant = 'fbkill'").fetchall()
    stored = Counter(r[0] for r in rows)
    db.close()
    acked_missing = sum(1 for k in acked if stored[k] == 0)
    never = sum(1 for k in keys if stored[k] == 0)
    return {"posts": posts, "acked": len(acked), "acked_at_kill": acked_at_kill, "interrupted": interrupted,
            "retries": retries[0], "error_kinds": dict(Counter(e.split(":")[0] for e in errors)),
            "rows": len(rows), "expected": posts, "got": len(rows),
            "acked_but_missing": acked_missing, "never_stored": never, "lost": acked_missing + never,
            "duplicated": sum(n - 1 for n in stored.values() if n > 1)}


# ---- fuzzing and soak on one real server -----------------------------------------------------------------------------


def _serve_config(ws: Path) -> Path:
    path = ws.parent / "robustness-serve.yaml"
    path.write_text(SERVE_YAML, encoding="utf-8")
    return path


def fuzz(url: str, key: str, admin: str, seconds: float, examples: int) -> dict[str, Any]:
    from serve_fuzz_support import fuzz_server

    r = fuzz_server(url, key, schema_key=admin, max_examples=examples, seconds=seconds)
    return {k: r[k] for k in ("requests", "client_errors", "server_errors", "transport_errors", "by_status",
                              "operations", "skipped_operations", "sweep_incomplete")} | {"failures": r["failures"][:5]}


def soak(url: str, pid: int, key: str, clients: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    import openai
    import psutil
    from serve_support import ACME_DOCS

    questions = [f"What does the text say about {w}?" for w in ("the fox", "the owl", "shipping", "berries", "oak")]
    questions += [t.split(".")[0] + "?" for t in ACME_DOCS.values()]
    proc = psutil.Process(pid)
    rss = [(0.0, proc.memory_info().rss)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + seconds

    def client(cid: int) -> None:
        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)
        i = cid
        while time.monotonic() < stop_at:
            q = questions[i % len(questions)] + f" ({i})"
            i += clients
            t0 = time.perf_counter()
            try:
                # semantic cache off: every request runs retrieval and generation, the path a leak would be in
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": q}],
                                          max_tokens=max_tokens, extra_body={"ragtune": {"cache": False}})
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, not raised
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(2.0)
        rss.append((time.monotonic() - started, proc.memory_info().rss))
    wall = time.monotonic() - started
    lat = sorted(latencies)
    mb = [r / 2**20 for _, r in rss]
    half = [m for (t, _), m in zip(rss, mb, strict=True) if t >= wall / 2] or mb[-1:]
    return {"clients": clients, "seconds": round(wall, 1), "max_tokens": max_tokens, "cache": False,
            "requests": len(lat), "errors": len(errors),
            "error_samples": errors[:3], "p50_s": round(statistics.median(lat), 3) if lat else None,
            "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
            "throughput_rps": round(len(lat) / wall, 3) if wall else 0.0,
            "rss_start_mb": round(mb[0], 1), "rss_end_mb": round(mb[-1], 1), "rss_peak_mb": round(max(mb), 1),
            "rss_growth_mb": round(mb[-1] - mb[0], 1),
            # growth over the second half alone: warm-up (allocator arenas, caches) is over, a leak is not
            "rss_growth_second_half_mb": round(mb[-1] - half[0], 1)}


def serve_section(workdir: Path, quick: bool, posts: int, fuzz_seconds: float, soak_seconds: float) -> dict[str, Any]:
    from serve_support import Server, build_workspace

    from ragtune.index.embedding import Embedder

    ws = build_workspace(workdir / "serve", Embedder())
    out: dict[str, Any] = {}
    print(f"kill -9 feedback: {posts} posts ...", flush=True)
    out["feedback"] = kill_feedback(ws, posts)
    acme, admin = tenant_key(ws, "acme"), tenant_key(ws, "globex", admin=True)
    server = Server(ws, "--config", str(_serve_config(ws)))
    try:
        print(f"fuzzing {fuzz_seconds:.0f}s ...", flush=True)
        out["fuzz"] = fuzz(server.url, acme, admin, fuzz_seconds, 8 if quick else 30)
        print(f"soak: 8 clients x {soak_seconds:.0f}s ...", flush=True)
        out["soak"] = soak(server.url, server.proc.pid, acme, 8, soak_seconds, 8)
    finally:
        server.stop()
    return out


# ---- report ----------------------------------------------------------------------------------------------------------


def table(res: dict[str, Any]) -> None:
    ta, fz, ing, k9, sk, inj = (res["tenant_attacks"], res["fuzz"], res["ingest"], res["kill9"], res["soak"],
                                res["injection"])
    rows = [
        ("tenant attacks", f"{ta['attacks']} attacks, {ta['hits']} own-tenant hits", f"leaks {ta['leaks']}"),
        ("fuzzing", f"{fz['requests']} requests, {fz['client_errors']} 4xx, {fz['transport_errors']} transport",
         f"5xx {fz['server_errors']}"),
        ("hostile ingest", f"{ing['files']} entries: {ing['warned']} warned, {ing['ingested']} ingested",
         f"crashed {ing['crashed']}"),
    ]
    for name in ("ingest", "synth", "train", "feedback"):
        t = k9[name]
        note = "" if t.get("interrupted") else " (finished before the kill!)"
        rows.append((f"kill -9 {name}", f"{t['got']}/{t['expected']} records{note}",
                     f"lost {t['lost']}, dup {t['duplicated']}"))
    rows.append(("soak", f"{sk['requests']} req, p50 {sk['p50_s']}s, p95 {sk['p95_s']}s, RSS "
                 f"{sk['rss_start_mb']}->{sk['rss_end_mb']} MB", f"errors {sk['errors']}"))
    rows.append(("injection screening", f"detection {inj['detection_rate']:.1%}, false positives "
                 f"{inj['false_positive_rate']:.1%} ({inj['cases']} cases)", "-"))
    print(f"\n{'check':<22}{'what ran':<66}{'must be 0':>22}")
    for name, what, zero in rows:
        print(f"{name:<22}{what:<66}{zero:>22}")
    for split, s in inj["by_split"].items():
        print(f"{'  injection ' + split:<22}detection {s['detection_rate']:.1%}, false positives "
              f"{s['false_positive_rate']:.1%} ({s['cases']} cases)")
    print(f"kill -9 totals: lost {k9['lost']}, duplicated {k9['duplicated']}")


def failures(res: dict[str, Any]) -> list[str]:
    bad = []
    checks = {"tenant_attacks.leaks": res["tenant_attacks"]["leaks"],
              "fuzz.server_errors": res["fuzz"]["server_errors"],
              "fuzz.transport_errors": res["fuzz"]["transport_errors"], "ingest.crashed": res["ingest"]["crashes"],
              "kill9.lost": res["kill9"]["lost"], "kill9.duplicated": res["kill9"]["duplicated"],
              "soak.errors": res["soak"]["errors"]}
    for name, value in checks.items():
        if value:
            bad.append(f"{name} = {value}")
    return bad


KILL9_TARGETS = ("ingest", "synth", "train", "feedback")


def add_kill9_totals(k9: dict[str, Any]) -> None:
    """Lost and duplicated records over every kill -9 target, and the targets the kill did not interrupt."""
    k9["lost"] = sum(k9[t]["lost"] for t in KILL9_TARGETS)
    k9["duplicated"] = sum(k9[t]["duplicated"] for t in KILL9_TARGETS)
    k9["not_interrupted"] = [t for t in KILL9_TARGETS if not k9[t]["interrupted"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fuzz 60 s, 60 feedback posts, 90 s soak")
    parser.add_argument("--soak-seconds", type=float)
    parser.add_argument("--fuzz-seconds", type=float)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only-train", action="store_true", help="re-measure only the train kill -9 target and "
                        "update it (and the kill9 totals) in the existing results file")
    args = parser.parse_args()
    quick = args.quick
    soak_s = args.soak_seconds or (90.0 if quick else 600.0)
    fuzz_s = args.fuzz_seconds or (60.0 if quick else 240.0)
    posts = 60 if quick else 200
    out = args.out or ROOT / "benchmarks" / "results" / ("robustness_quick.json" if quick else "robustness.json")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ragtune-robustness-"))
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    res: dict[str, Any] = {}

    def step(name: str, fn, *a):
        t0 = time.perf_counter()
        print(f"{name} ...", flush=True)
        value = fn(*a)
        timings[name] = round(time.perf_counter() - t0, 1)
        return value

    if args.only_train:
        saved = json.loads(out.read_text(encoding="utf-8"))
        saved["kill9"]["train"] = step("kill -9 train sft", kill_train, workdir, args.train_steps)
        add_kill9_totals(saved["kill9"])
        saved["meta"]["failing_zero_targets"] = bad = failures(saved)
        saved["meta"].setdefault("timings_s", {}).update(timings)
        saved["meta"]["train_remeasured"] = time.time()
        out.write_text(json.dumps(saved, indent=2, default=str) + "\n")
        table(saved)
        print(f"updated {out}")
        sys.exit(1 if bad else 0)
    res["tenant_attacks"] = step("tenant attacks", tenant_attacks)
    res["injection"] = step("injection screening", injection)
    h = step("hostile ingest", hostile, workdir)
    res["ingest"] = {**h, "crashes": h["crashed"]}
    k9: dict[str, Any] = {}
    k9["ingest"], ingest_ws = step("kill -9 ingest", kill_ingest, workdir)
    k9["synth"] = step("kill -9 synth raft", kill_synth, workdir, ingest_ws)
    k9["train"] = step("kill -9 train sft", kill_train, workdir, args.train_steps)
    served = step("serve (feedback kill -9, fuzz, soak)", serve_section, workdir, quick, posts, fuzz_s, soak_s)
    k9["feedback"] = served["feedback"]
    add_kill9_totals(k9)
    res["kill9"] = k9
    res["fuzz"], res["soak"] = served["fuzz"], served["soak"]
    table(res)
    bad = failures(res)
    meta = {"quick": quick, "soak_seconds": soak_s, "fuzz_seconds": fuzz_s, "feedback_posts": posts,
            "train_steps": args.train_steps, "timings_s": timings, "model": "smollm2-135m-instruct (bundled)",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS')}", "python": platform.python_version(), "time": time.time(),
            "failing_zero_targets": bad}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, **res}, indent=2, default=str) + "\n")
    print(f"wrote {out} ({sum(timings.values()):.0f}s)")
    if bad:
        print("NOT ZERO: " + "; ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
