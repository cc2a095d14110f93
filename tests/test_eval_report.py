"""The comparison report: every file exists, the PNGs open, the HTML page is self-contained."""

from __future__ import annotations

import json

from PIL import Image

from ragtune.eval.report import SystemReport, write_report


def _records(prefix: str, f1s: list[float]) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "question": f"Question {i}?",
            "answers": ["yes"],
            "prediction": f"{prefix} {i}",
            "generation": f"{prefix} {i} <b>",
            "em": float(f == 1.0),
            "f1": f,
        }
        for i, f in enumerate(f1s)
    ]


def test_report_files(tmp_path):
    systems = [
        SystemReport(
            "base",
            {"model": "smollm2-135m-instruct", "setting": "oracle", "distractors": [0, 1, 2], "prompt": "short"},
            {"n": 2, "em": 0.5, "f1": 0.6, "quote_precision": None, "questions_per_min": 12.0},
            _records("base", [1.0, 0.2]),
            {0: {"f1": 0.7}, 1: {"f1": 0.6}, 2: {"f1": 0.5}},
        ),
        SystemReport(
            "raft",
            {
                "model": "smollm2-135m-instruct",
                "adapter": "/x/adapter",
                "setting": "retrieved",
                "k": 5,
                "retrieval_mode": "hybrid",
                "prompt": "cot",
            },
            {"n": 2, "em": 1.0, "f1": 1.0, "quote_precision": 0.75, "recall@5": 0.5, "mrr": 0.5},
            _records("raft", [1.0, 1.0]),
        ),
    ]
    paths = write_report(systems, tmp_path / "report", title="test report", data={"format": "hotpotqa", "limit": 2})
    out = tmp_path / "report"
    for name in (
        "report.md",
        "report.json",
        "report.html",
        "f1_per_system.png",
        "f1_vs_k.png",
        "per_question.jsonl",
        "predictions/base.jsonl",
        "predictions/raft.jsonl",
    ):
        assert (out / name).exists(), name
    for png in ("f1_per_system.png", "f1_vs_k.png"):
        with Image.open(out / png) as img:
            img.verify()
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.size[0] > 100
    md = (out / "report.md").read_text()
    assert "| base |" in md and "60.0%" in md and "K=2" in md and "recall@k" in md
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 2 and 'src="f1' not in html  # images inlined
    assert "&lt;b&gt;" in html  # generations are escaped
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["systems"]] == ["base", "raft"]
    assert report["systems"][0]["curve"]["2"]["f1"] == 0.5
    rows = [json.loads(line) for line in (out / "per_question.jsonl").read_text().splitlines()]
    assert rows[0]["systems"]["raft"]["prediction"] == "raft 0"


def test_report_without_sweep_still_draws_the_k_plot(tmp_path):
    systems = [SystemReport("only", {"model": "m", "setting": "closed-book"}, {"n": 1, "em": 0.0, "f1": 0.0})]
    write_report(systems, tmp_path)
    with Image.open(tmp_path / "f1_vs_k.png") as img:
        assert img.format == "PNG"
