"""The quality report of `ragtune synth raft`: what the teacher proposed and what the filters did with it.

Computed from the files themselves (the output's group counts, the rejected side file, the teacher sidecar), so it
is the same after a resume and its numbers add up: candidates == kept + the rejections of every filter. Written as
`quality_report.json` and a short `quality_report.md` beside the output, both 0600 (they quote users' questions).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.llm.base import LLM
from ragtune.synth import filters, grounding


class TeacherClock:
    """Teacher wall time and tokens, summed over resumed runs in a sidecar (`<out>.teacher.json`): they vary with
    how a run was cut into waves, so they stay out of the group file, which must be byte-identical after a resume."""

    def __init__(self, out: Path, fresh: bool, teacher: LLM | None = None):
        import json

        self.path = out.with_name(out.name + ".teacher.json")
        self.teacher = teacher
        self.seconds = 0.0
        self.before = {"completion_tokens": 0, "prompt_tokens": 0, "requests": 0}
        if not fresh and self.path.exists():
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            self.seconds = float(saved.get("teacher_seconds", 0.0))
            self.before = {k: int(saved.get(k, 0)) for k in self.before}
        self._start = dict(teacher.usage.to_dict()) if teacher is not None else {}

    def add(self, seconds: float) -> None:
        self.seconds += seconds

    def totals(self) -> dict[str, Any]:
        now = self.teacher.usage.to_dict() if self.teacher is not None else {}
        spent = {k: v + int(now.get(k, 0)) - int(self._start.get(k, 0)) for k, v in self.before.items()}
        return {"teacher_seconds": round(self.seconds, 3), **spent}

    def save(self) -> None:
        from ragtune.workspace import write_json_atomic

        write_json_atomic(self.path, self.totals())


def report_paths(out: Path) -> tuple[Path, Path]:
    """`raft.jsonl` -> quality_report.json / .md beside it; another name gets its own prefix."""
    stem = "quality_report" if out.name == "raft.jsonl" else f"{out.stem}.quality_report"
    return out.with_name(stem + ".json"), out.with_name(stem + ".md")


def quality_report(out: Path, summary: Any = None, chunks: int | None = None, style: str = "",
                   teacher: str = "") -> dict[str, Any]:
    """Kept / rejected per filter (with one example of each), questions per chunk, teacher time and tokens, computed
    from the files themselves, so the numbers add up: candidates == kept + sum of rejections."""
    from ragtune.synth.store import iter_groups

    groups = list(iter_groups(out))
    counts: Counter = Counter()
    for g in groups:
        counts.update(g.get("counts", {}))
    rejected_file = filters.rejected_path(out)
    rejections: dict[str, list[dict[str, Any]]] = {}
    for g in iter_groups(rejected_file):
        for r in g.get("examples", []):
            rejections.setdefault(r["filter"], []).append(r)
    kept = [e for g in groups for e in g.get("examples", [])]
    per_chunk = Counter(len(g.get("examples", [])) for g in groups if not g["group_id"].startswith("duplicates:"))
    n_chunks = chunks if chunks is not None else len(groups)
    candidates = int(counts.get("candidates", 0))
    by_filter: dict[str, dict[str, Any]] = {}
    for name in filters.FILTERS:
        rows = rejections.get(name, [])
        n = int(counts.get(f"rejected: {name}", 0))
        reasons = Counter(r["reason"] for r in rows)
        by_filter[name] = {
            "rejected": n,
            "rate": round(n / candidates, 4) if candidates else 0.0,
            "reasons": dict(reasons.most_common()),
            "example": {k: rows[0][k] for k in ("question", "answer", "reason", "detail")} if rows else None,
        }
    example = None
    if kept:
        e = kept[0]
        example = {"question": e["question"], "answer": e["answer"], "quotes": e["quotes"],
                   "grounding": e.get("metadata", {}).get("grounding")}
    spent = TeacherClock(out, fresh=False).totals()
    report = {
        "output": str(out),
        "rejected_file": str(rejected_file),
        "teacher": teacher,
        "prompt_style": style,
        "fuzzy_backend": grounding.fuzzy_backend(),
        "chunks": n_chunks,
        "candidates": candidates,
        "kept": len(kept),
        "rejected": sum(f["rejected"] for f in by_filter.values()),
        "yield_per_chunk": round(len(kept) / n_chunks, 3) if n_chunks else 0.0,
        "filters": by_filter,
        "grounding": {k.split(": ", 1)[1]: int(v) for k, v in sorted(counts.items()) if k.startswith("grounding: ")},
        "answers_shortened": int(counts.get("answers_shortened", 0)),
        "round_trip_by": {k.split(" by ", 1)[1]: int(v) for k, v in sorted(counts.items())
                          if k.startswith("round trip: by ")},
        "questions_per_chunk": {str(k): v for k, v in sorted(per_chunk.items())},
        "teacher_seconds": round(spent["teacher_seconds"], 1),
        "teacher_requests": spent["requests"],
        "teacher_completion_tokens": spent["completion_tokens"],
        "teacher_prompt_tokens": spent["prompt_tokens"],
        "example_kept": example,
        "seconds": round(summary.seconds, 1) if summary else None,
    }
    return report


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# RAFT quality report: {Path(report['output']).name}",
        "",
        f"Teacher `{report['teacher']}` ({report['prompt_style']} prompts), {report['chunks']} chunks: "
        f"{report['candidates']} candidate questions, **{report['kept']} kept** ({report['yield_per_chunk']} per "
        f"chunk), {report['rejected']} rejected. Teacher time {report['teacher_seconds']} s, "
        f"{report['teacher_completion_tokens']} completion tokens.",
        "",
        "| filter | rejected | rate | example |",
        "|---|---|---|---|",
    ]
    for name, f in report["filters"].items():
        ex = f["example"]
        shown = f"{ex['question'] or '(none)'} — {ex['reason']}" if ex else ""
        lines.append(f"| {name} | {f['rejected']} | {100 * f['rate']:.0f}% | {shown.replace('|', '/')} |")
    if report.get("notes"):
        lines += ["", "Filters: " + "; ".join(f"{k} {v}" for k, v in report["notes"].items()) + "."]
    lines += ["", f"Grounding of kept answers: {report['grounding']}; questions per chunk: "
              f"{report['questions_per_chunk']}."]
    if report.get("round_trip_by"):
        lines += ["", f"Round trip passed by: {report['round_trip_by']}."]
    if report["example_kept"]:
        ex = report["example_kept"]
        lines += ["", f"Kept example: **{ex['question']}** → {ex['answer']} (quote: \"{ex['quotes'][0]}\")"]
    lines += ["", f"Rejected examples with reasons: `{report['rejected_file']}`."]
    return "\n".join(lines) + "\n"


def write_quality_report(out: Path, summary: Any = None, chunks: Sequence[Any] | None = None,
                         style: str = "", teacher: str = "", notes: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the report beside `out`; `notes` says how filters ran (e.g. round trip off without an index)."""
    from ragtune.workspace import write_json_atomic

    report = quality_report(out, summary, len(chunks) if chunks is not None else None, style, teacher)
    report["notes"] = notes or {}
    json_path, md_path = report_paths(out)
    write_json_atomic(json_path, report)
    md_path.write_text(_markdown(report), encoding="utf-8")
    for path in (json_path, md_path):  # it quotes users' questions and answers
        path.chmod(0o600)
    return report
