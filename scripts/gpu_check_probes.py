"""Probes `scripts/gpu_check.sh` runs that are not a ragtune command: attention kernels, and a served model's latency.

    python scripts/gpu_check_probes.py attention            # SDPA vs FlashAttention-2 vs eager on CUDA, bf16
    python scripts/gpu_check_probes.py serve URL KEY        # 8 concurrent chat requests against `ragtune serve`

Each prints one JSON object (the check's figures) on stdout.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

PROMPTS = [
    [{"role": "user", "content": q}]
    for q in ("What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Who wrote Hamlet?",
              "What is the boiling point of water in Celsius?", "Say hello.", "Translate 'thank you' into French.",
              "What is the largest planet?")
]


def attention() -> dict:
    """Greedy answers and speed per attention kernel; every kernel should give SDPA's answers."""
    from ragtune.llm import GenerationConfig, load_llm

    config = GenerationConfig(max_new_tokens=48)
    kernels = ["sdpa", "eager"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    out: dict = {"kernels": {}}
    reference = None
    for kernel in kernels:
        try:
            llm = load_llm(device="cuda", dtype="bfloat16", attn_implementation=kernel)
            llm.generate(PROMPTS[:1], config)  # warm-up: CUDA kernels compile / load on first use
            started = time.perf_counter()
            gens = llm.generate(PROMPTS, config, batch_size=len(PROMPTS))
            seconds = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - a kernel this build lacks is a figure, not a crash
            out["kernels"][kernel] = {"status": "failed", "reason": str(exc)[:300]}
            continue
        texts = [g.text for g in gens]
        reference = reference if reference is not None else texts
        tokens = sum(g.completion_tokens for g in gens)
        out["kernels"][kernel] = {"status": "ok", "seconds": round(seconds, 3),
                                  "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
                                  "same_answers_as_sdpa": sum(a == b for a, b in zip(texts, reference, strict=True))}
    if "flash_attention_2" not in kernels:
        out["kernels"]["flash_attention_2"] = {"status": "skipped", "reason": "pip install flash-attn"}
    return out


def serve(url: str, key: str, clients: int = 8) -> dict:
    """Wait for the server, then `clients` concurrent questions: requests/s and latency percentiles."""
    import httpx

    deadline = time.time() + 600  # vLLM loads and captures CUDA graphs before the server answers
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    else:
        raise SystemExit("the server never answered /health")
    headers = {"Authorization": f"Bearer {key}"}
    questions = ["Were Scott Derrickson and Ed Wood of the same nationality?"] * clients

    def ask(question: str) -> float:
        started = time.perf_counter()
        r = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=300,
                       json={"model": "gpu-lora", "messages": [{"role": "user", "content": question}],
                             "max_tokens": 64})
        r.raise_for_status()
        return time.perf_counter() - started

    ask(questions[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = sorted(pool.map(ask, questions))
    wall = time.perf_counter() - started
    return {"clients": clients, "requests_per_s": round(clients / wall, 2),
            "latency_p50_s": round(statistics.median(latencies), 3),
            "latency_p95_s": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 3)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["attention"]:
        result = attention()
    elif argv[:1] == ["serve"] and len(argv) == 3:
        result = serve(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
