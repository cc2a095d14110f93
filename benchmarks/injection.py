"""Prompt-injection screening benchmark: detection and false-positive rates of `ragtune.serve.guardrails.find_injection`
on tests/data/injection_cases.jsonl, per split (`dev`, `dev2`, `dev3` were used to write and revise the rules;
`heldout` was written last and never used to revise them) and in all, plus the screening cost per chunk.

    .venv/bin/python benchmarks/injection.py [--cases PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from ragtune.serve.guardrails import find_injection, injection_benchmark

ROOT = Path(__file__).resolve().parents[1]


def screening_cost_ms(chunks: int = 200, words: int = 350) -> float:
    """CPU milliseconds to screen one chunk of `words` words drawn from the README (about 2,000 characters)."""
    vocabulary = (ROOT / "README.md").read_text(encoding="utf-8").split()
    rng = random.Random(0)
    texts = [" ".join(rng.choices(vocabulary, k=words)) for _ in range(chunks)]
    start = time.process_time()
    for text in texts:
        find_injection(text)
    return (time.process_time() - start) * 1000 / chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=ROOT / "tests" / "data" / "injection_cases.jsonl")
    parser.add_argument("--json", type=Path, default=None, help="write the full results here")
    args = parser.parse_args()
    results = {split or "all": injection_benchmark(args.cases, split) for split in ("dev", "dev2", "dev3", "heldout",
                                                                                     None)}
    print(f"{'split':8} {'detected':>10} {'rate':>6} {'false pos.':>11} {'rate':>6}")
    for name, r in results.items():
        print(f"{name:8} {r['detected']:>4}/{r['injections']:<5} {r['detection_rate']:>6.3f} "
              f"{r['false_positives']:>5}/{r['benign']:<5} {r['false_positive_rate']:>6.3f}")
    for r in results["heldout"]["missed"]:
        print(f"  held-out miss ({r['kind']}): {r['text']!r}")
    for r in results["heldout"]["false_positive_texts"]:
        print(f"  held-out false positive ({r['kind']}): {r['text']!r}")
    cost = screening_cost_ms()
    print(f"screening cost: {cost:.2f} CPU ms per ~2,000-character chunk")
    if args.json:
        args.json.write_text(json.dumps({"splits": results, "ms_per_chunk": cost}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
