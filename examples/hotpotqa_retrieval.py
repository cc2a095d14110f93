"""Demo step: how well does each search mode find HotpotQA's gold paragraphs in the bundled example?

    python examples/hotpotqa_retrieval.py --workspace ragtune-workspace/demo

Expects `ragtune ingest examples/hotpotqa_mini/hotpotqa_mini.json --workspace DIR` to have run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ragtune.retrieve.search import Searcher

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default="ragtune-workspace/demo")
    parser.add_argument("--data", default=str(HERE / "hotpotqa_mini" / "hotpotqa_mini.json"))
    args = parser.parse_args()
    questions = json.loads(Path(args.data).read_text(encoding="utf-8"))
    searcher = Searcher(args.workspace)
    table = Table(title=f"Gold-paragraph retrieval on {len(questions)} HotpotQA questions")
    for col in ("mode", "recall@2", "recall@5", "all-gold@10", "MRR"):
        table.add_column(col)
    for mode in ("bm25", "dense", "hybrid"):
        r2 = r5 = allgold = mrr = 0.0
        for q in questions:
            gold = {t for t, _ in q["supporting_facts"]}
            titles = [h.title for h in searcher.search(q["question"], k=10, mode=mode)]
            r2 += len(gold & set(titles[:2])) / len(gold)
            r5 += len(gold & set(titles[:5])) / len(gold)
            allgold += gold <= set(titles)
            mrr += next((1 / (i + 1) for i, t in enumerate(titles) if t in gold), 0.0)
        n = len(questions)
        table.add_row(mode, f"{r2 / n:.3f}", f"{r5 / n:.3f}", f"{allgold / n:.3f}", f"{mrr / n:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
