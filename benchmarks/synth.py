"""RAFT synthesis throughput: ragtune vs the sequential two-worker loop of gorilla's raft.py, same teacher server.

Both talk to one OpenAI-compatible teacher server on 127.0.0.1 (a real uvicorn process):
- `--teacher smollm2` (default): ragtune's own server running the bundled SmolLM2-135M through transformers, batching
  concurrent requests (as vLLM / llama.cpp server do);
- `--teacher fake`: the rule-based teacher behind the same server with a GPU-like cost model (a batch costs
  `--latency-ms` plus `--per-item-ms` per sequence): what concurrency buys against a batching GPU server.

The baseline re-implements raft.py's loop: a pool of 2 workers over chunks; per chunk one request for the questions,
then one request per question, sequentially; the teacher sees the oracle chunk alone; nothing is validated.
ragtune runs `synthesize_raft` with `--concurrency` requests in flight, validation and one retry.

Figures: examples per minute (what each writes: everything for raft.py, validated examples for ragtune), teacher
answers per minute, valid examples per minute (raft.py's answers checked by ragtune's validator), quote validity.

    python benchmarks/synth.py --quick            # < 10 min on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BLOG = ROOT.parent / "shared" / "data" / "raft_sample_docs" / "blog.txt"
RESULTS = ROOT / "benchmarks" / "results" / "synth.json"

# raft.py's prompts (gorilla/raft/raft.py), verbatim in substance
RAFT_QUESTION_SYSTEM = (
    "You are a synthetic question-answer pair generator. Given a chunk of context about some topic(s), generate {n} "
    "example questions a user could ask and would be answered using information from the chunk. For example, if the "
    "given context was a Wikipedia paragraph about the United States, an example question could be 'How many states "
    "are in the United States?'"
)
RAFT_ANSWER_PROMPT = """
        Question: {question}\nContext: {context}\n
        Answer this question using the information given in the context above. Here is things to pay attention to:
        - First provide step-by-step reasoning on how to answer the question.
        - In the reasoning, if you need to copy paste some sentences from the context, include them in ##begin_quote## and ##end_quote##. This would mean that things outside of ##begin_quote## and ##end_quote## are not directly copy paste from the context.
        - End your response with final answer in the form <ANSWER>: $answer, the answer should be succinct.
        You MUST begin your final answer with the tag "<ANSWER>:".
"""  # noqa: E501


def raftpy_baseline(chunks, llm, n_questions: int, k: int, p: float, seed: int, q_tokens: int, a_tokens: int):
    """raft.py's loop: ThreadPoolExecutor(max_workers=2) over chunks, sequential requests inside a chunk."""
    from ragtune.llm.base import GenerationConfig

    rng = random.Random(seed)
    texts = [c.text for c in chunks]

    def per_chunk(i: int) -> list[dict]:
        chunk = texts[i]
        reply = llm.generate(
            [
                [
                    {"role": "system", "content": RAFT_QUESTION_SYSTEM.format(n=n_questions)},
                    {"role": "user", "content": chunk},
                ]
            ],
            GenerationConfig(max_new_tokens=q_tokens),
            batch_size=1,
        )[0].text
        questions = [re.sub(r"^\s*\d+[.)]\s*", "", q).strip() for q in reply.split("\n")]
        questions = [q for q in questions if any(ch.isalpha() for ch in q)][:n_questions]
        rows = []
        for q in questions:
            answer = llm.generate(
                [
                    [
                        {
                            "role": "system",
                            "content": "You are a helpful question answerer who can "
                            "provide an answer given a question and relevant context.",
                        },
                        {"role": "user", "content": RAFT_ANSWER_PROMPT.format(question=q, context=chunk)},
                    ]
                ],
                GenerationConfig(max_new_tokens=a_tokens),
                batch_size=1,
            )[0].text
            distractors = rng.sample([t for j, t in enumerate(texts) if j != i], k)
            docs = [chunk, *distractors] if rng.random() < p else distractors + [rng.choice(distractors)]
            rows.append({"question": q, "oracle": chunk, "docs": docs, "cot_answer": answer})
        return rows

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [row for rows in pool.map(per_chunk, range(len(chunks))) for row in rows]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, latency_ms: float, per_item_ms: float, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    if kind == "smollm2":
        cmd = [
            sys.executable,
            "-m",
            "ragtune.llm.server",
            "--model",
            "smollm2-135m-instruct",
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
            "--batch-wait-ms",
            "50",
            "--name",
            "teacher",
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "ragtune.synth.fake_teacher",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--per-item-ms",
            str(per_item_ms),
            "--max-batch",
            str(max_batch),
        ]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError("teacher server exited")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("teacher server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few chunks, short answers (< 10 min on 2 cores)")
    parser.add_argument("--teacher", choices=["smollm2", "fake"], default="smollm2")
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=250.0, help="fake teacher: cost of one batch")
    parser.add_argument("--per-item-ms", type=float, default=10.0, help="fake teacher: cost per sequence")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from ragtune.config import IngestConfig
    from ragtune.index.ingest import ingest
    from ragtune.index.store import ChunkStore
    from ragtune.llm import load_llm
    from ragtune.synth.raft import RaftConfig, synthesize_raft
    from ragtune.synth.store import read_raft
    from ragtune.synth.validate import check_cot

    small = args.teacher == "smollm2"
    n_chunks = args.chunks or ((3 if args.quick else 12) if small else (16 if args.quick else 32))
    q_tokens, a_tokens = (48, 64) if (small and args.quick) else (96, 192)
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-synth-"))
    try:
        ingest([BLOG], tmp / "ws", IngestConfig(chunk_size=120))
        chunks = sorted(ChunkStore(tmp / "ws").read_chunks(), key=lambda c: (c.start, c.chunk_id))
        chunks = [c for c in chunks if len(c.text.split()) >= 12][:n_chunks]
        proc, url = start_server(args.teacher, args.latency_ms, args.per_item_ms, args.concurrency)
        try:
            warm = load_llm("openai:teacher", base_url=url, api_key="none", timeout=600, concurrency=1)
            warm.chat([{"role": "user", "content": "hi"}])

            base_llm = load_llm("openai:teacher", base_url=url, api_key="none", timeout=600, concurrency=1)
            t0 = time.perf_counter()
            rows = raftpy_baseline(chunks, base_llm, args.questions, 3, 0.8, 0, q_tokens, a_tokens)
            base_s = time.perf_counter() - t0
            base_valid = sum(check_cot(r["cot_answer"], [r["oracle"]]).valid for r in rows)

            rag_llm = load_llm(
                "openai:teacher", base_url=url, api_key="none", timeout=600, concurrency=args.concurrency
            )
            config = RaftConfig(
                questions_per_chunk=args.questions,
                distractors=3,
                p_oracle=0.8,
                seed=0,
                concurrency=args.concurrency,
                retries=1,
                teacher_context="oracle",
                question_tokens=q_tokens,
                answer_tokens=a_tokens,
            )
            t0 = time.perf_counter()
            summary = synthesize_raft(tmp / "ws", rag_llm, config, chunks=chunks, out=tmp / "raft.jsonl")
            rag_s = time.perf_counter() - t0
            examples = read_raft(tmp / "raft.jsonl")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    c = summary.counts
    per_min = 60.0
    result = {
        "teacher": args.teacher if not small else "smollm2-135m-instruct via ragtune.llm.server (CPU, transformers)",
        "fake_cost_model_ms": {"per_batch": args.latency_ms, "per_item": args.per_item_ms} if not small else None,
        "quick": args.quick,
        "chunks": len(chunks),
        "questions_per_chunk": args.questions,
        "question_tokens": q_tokens,
        "answer_tokens": a_tokens,
        "concurrency": args.concurrency,
        "cpu_count": os.cpu_count(),
        "raftpy_loop": {
            "seconds": round(base_s, 1),
            "examples": len(rows),
            "valid_examples": base_valid,
            "examples_per_min": round(len(rows) / base_s * per_min, 2),
            "answers_per_min": round(len(rows) / base_s * per_min, 2),
            "valid_examples_per_min": round(base_valid / base_s * per_min, 2),
            "quote_validity": round(base_valid / len(rows), 3) if rows else None,
            "requests": base_llm.usage.requests,
        },
        "ragtune": {
            "seconds": round(rag_s, 1),
            "examples": len(examples),
            "valid_examples": len(examples),
            "questions": c.get("questions", 0),
            "answers_checked": c.get("answers_checked", 0),
            "examples_per_min": round(len(examples) / rag_s * per_min, 2),
            "answers_per_min": round(c.get("answers_checked", 0) / rag_s * per_min, 2),
            "valid_examples_per_min": round(len(examples) / rag_s * per_min, 2),
            "quote_validity": round(c.get("answers_valid", 0) / c["answers_checked"], 3)
            if c.get("answers_checked")
            else None,
            "quote_validity_after_retry": round(c.get("answers_valid", 0) / c["questions"], 3)
            if c.get("questions")
            else None,
            "requests": rag_llm.usage.requests,
        },
    }
    r, b = result["ragtune"], result["raftpy_loop"]
    result["speedup_answers_per_min"] = (
        round(r["answers_per_min"] / b["answers_per_min"], 2) if b["answers_per_min"] else None
    )
    result["speedup_valid_examples_per_min"] = (
        round(r["valid_examples_per_min"] / b["valid_examples_per_min"], 2) if b["valid_examples_per_min"] else None
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    result["notes"] = (
        "examples_per_min counts what each writes: every answer for the raft.py loop (it validates nothing), "
        "validated examples for ragtune; answers_per_min counts teacher answers produced (ragtune's include "
        "retries of invalid answers); valid_examples_per_min checks both with ragtune's validator. "
        "Timings on a 2-core CPU shared with other jobs (load average ~6) are noisy."
    )
    existing[args.teacher] = result
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
