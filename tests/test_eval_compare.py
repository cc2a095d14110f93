"""`ragtune.eval.compare`, the comparison both `ragtune compare` and `ragtune run` call: its question loading, its
checks before any model loads, and the plain table lines a run log shows (the full report: test_eval_e2e)."""

from __future__ import annotations

import json

import pytest
from conftest import HOTPOT_MINI

from ragtune.datasets import DatasetError
from ragtune.eval.compare import Comparison, check_engine, compare_systems, load_questions
from ragtune.eval.report import SystemReport
from ragtune.eval.runner import system_specs


def test_questions_load_sorted_and_warn_once_about_missing_gold(tmp_path):
    items = load_questions("hotpotqa", HOTPOT_MINI, split="all", limit=5)
    assert len(items) == 5 and [i.id for i in items] == sorted(i.id for i in items)
    rows = json.loads(HOTPOT_MINI.read_text(encoding="utf-8"))[:3]
    for row in rows[:2]:
        row["supporting_facts"] = []  # no gold document
    path = tmp_path / "q.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    warnings: list[str] = []
    load_questions("hotpotqa", path, split="all", warn=warnings.append)
    assert len(warnings) == 1 and warnings[0].startswith("2 of 3 questions have no gold document")
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    with pytest.raises(DatasetError, match="no questions"):
        load_questions("hotpotqa", empty, split="all")


def test_a_bad_engine_fails_before_any_question_is_read(tmp_path):
    assert check_engine(None) is None and check_engine("") is None and check_engine("llamacpp") == "llamacpp"
    specs = system_specs([{"name": "a", "engine": "turbo"}])
    with pytest.raises(ValueError, match="unknown engine 'turbo'"):
        compare_systems(specs, "hotpotqa", tmp_path / "absent.json", tmp_path / "ws", tmp_path / "report")
    assert not (tmp_path / "ws").exists()


def test_table_lines_hold_the_headline_and_the_paired_differences():
    def report(name: str, f1s: list[float]) -> SystemReport:
        records = [{"id": f"q{i}", "f1": f, "em": float(f == 1.0)} for i, f in enumerate(f1s)]
        scores = {"n": len(f1s), "f1": sum(f1s) / len(f1s), "em": sum(r["em"] for r in records) / len(f1s)}
        return SystemReport(name, {"name": name, "model": "m", "setting": "oracle"}, scores, records)

    from ragtune.eval.report import paired_comparisons

    reports = [report("base", [0.0, 0.5, 0.0, 1.0]), report("tuned", [1.0, 1.0, 0.5, 1.0])]
    lines = Comparison(reports, paired_comparisons(reports), {}).table_lines()
    assert lines[0].startswith("system | model")
    assert lines[1].startswith("base | m") and lines[2].startswith("tuned | m")
    assert lines[3].startswith("system | against") and lines[4].startswith("tuned | base (baseline) | 4 | +50.0 [")
