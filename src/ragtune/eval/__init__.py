"""Evaluation: EM / F1, quotes, robustness to distractors, retrieval metrics, and the comparison report.

Python API (the CLI commands `ragtune eval` and `ragtune compare` are thin layers over it):

    from ragtune.eval import EvalSettings, evaluate, load_dataset
    from ragtune.llm import load_llm

    items = load_dataset("hotpotqa", "hotpot_dev.json", split="eval", limit=50)
    result = evaluate(items, load_llm(), EvalSettings(setting="oracle", distractors=3))
    print(result.scores["f1"])
"""

from ragtune.datasets import QAItem, load_dataset, load_items
from ragtune.eval.runner import EvalSettings, RunResult, SystemSpec, evaluate, evaluate_sweep, run_system

__all__ = [
    "EvalSettings",
    "QAItem",
    "RunResult",
    "SystemSpec",
    "evaluate",
    "evaluate_sweep",
    "load_dataset",
    "load_items",
    "run_system",
]
