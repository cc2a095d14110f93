"""The comparison report: several systems on the same questions, as markdown, JSON, PNG plots and one HTML page.

The HTML page inlines its PNGs as base64 so it can be mailed or attached to a pull request as a single file. Per-
question outputs are written next to it: a table of numbers says which system wins, the answers say why.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.workspace import write_json_atomic


@dataclass
class SystemReport:
    """One system's results: its description, its headline scores, per-question records and its robustness curve."""

    name: str
    system: dict[str, Any]
    scores: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    curve: dict[int, dict[str, Any]] = field(default_factory=dict)  # K -> scores (oracle sweep), may be empty


# Columns of the headline table: (key in scores, header, format). A column nobody has is dropped.
_COLUMNS: list[tuple[str, str, str]] = [
    ("n", "n", "{:d}"),
    ("em", "EM", "{:.1%}"),
    ("f1", "F1", "{:.1%}"),
    ("unanswerable_accuracy", "unanswerable acc.", "{:.1%}"),
    ("quote_precision", "quote precision", "{:.1%}"),
    ("oracle_citation_rate", "oracle cited", "{:.1%}"),
    ("recall@", "recall@k", "{:.1%}"),
    ("mrr", "MRR", "{:.3f}"),
    ("ndcg@", "nDCG@k", "{:.3f}"),
    ("latency_mean_s", "s / question", "{:.2f}"),
    ("questions_per_min", "questions / min", "{:.1f}"),
]


def _lookup(scores: dict[str, Any], key: str) -> Any:
    if key.endswith("@"):  # recall@5, ndcg@5: whatever k the run used
        for name, value in scores.items():
            if name.startswith(key):
                return value
        return None
    return scores.get(key)


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    try:
        return fmt.format(int(value) if fmt == "{:d}" else value)
    except (TypeError, ValueError):
        return str(value)


def _describe(system: dict[str, Any]) -> str:
    setting = system.get("setting", "")
    if setting == "oracle":
        ks = system.get("distractors", [0])
        ks = ks if isinstance(ks, list) else [ks]
        setting += f" + {ks[0]}" if len(ks) == 1 else f" + {ks[0]}..{ks[-1]}"
        setting += " distractors"
    elif setting == "retrieved":
        setting += f" top-{system.get('k', '')} {system.get('retrieval_mode', '')}".rstrip()
    return f"{setting}, {system.get('prompt', 'short')} prompt"


def headline_rows(systems: Sequence[SystemReport]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the headline table (shared by markdown and HTML)."""
    present = [c for c in _COLUMNS if any(_lookup(s.scores, c[0]) is not None for s in systems)]
    header = ["system", "model", "adapter", "setting"] + [c[1] for c in present]
    rows = []
    for s in systems:
        model = str(s.system.get("model", ""))
        adapter = s.system.get("adapter") or "–"
        row = [s.name, Path(model).name or model, Path(str(adapter)).name or str(adapter), _describe(s.system)]
        row += [_fmt(_lookup(s.scores, c[0]), c[2]) for c in present]
        rows.append(row)
    return header, rows


def curve_rows(systems: Sequence[SystemReport]) -> tuple[list[str], list[list[str]]]:
    """F1 at each K for the systems that ran a sweep."""
    ks = sorted({k for s in systems for k in s.curve})
    header = ["system"] + [f"K={k}" for k in ks]
    rows = [
        [s.name] + [_fmt(s.curve[k].get("f1") if k in s.curve else None, "{:.1%}") for k in ks]
        for s in systems
        if s.curve
    ]
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_f1_per_system(systems: Sequence[SystemReport], path: Path) -> Path:
    """Bars of F1 (and EM) per system."""
    plt = _pyplot()
    names = [s.name for s in systems]
    f1 = [100 * (s.scores.get("f1") or 0.0) for s in systems]
    em = [100 * (s.scores.get("em") or 0.0) for s in systems]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(names) + 2), 3.6), dpi=110)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], f1, width=0.4, label="F1", color="#3b6ea8")
    ax.bar([x + 0.2 for x in xs], em, width=0.4, label="EM", color="#9cc3e6")
    for x, value in zip(xs, f1, strict=True):
        ax.text(x - 0.2, value + 0.5, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, max([*f1, *em, 1.0]) * 1.2 + 1)
    ax.set_title("F1 and EM per system")
    ax.legend(frameon=False, loc="upper left", ncols=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_f1_vs_k(systems: Sequence[SystemReport], path: Path) -> Path:
    """F1 against the number of distractors K (the RAFT robustness curve); one line per system that swept K.

    Systems evaluated at a single K show as single points, so the plot exists (and says so) even without a sweep.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    plotted = False
    all_ks: set[int] = set()
    top = 1.0
    for s in systems:
        if not s.curve:
            continue
        ks = sorted(s.curve)
        values = [100 * (s.curve[k].get("f1") or 0.0) for k in ks]
        ax.plot(ks, values, marker="o", label=s.name)
        all_ks.update(ks)
        top = max(top, *values)
        plotted = True
    ax.set_ylim(0, top * 1.15 + 1)  # from zero: a drop of 2 points must not look like a collapse
    if all_ks:
        ax.set_xticks(sorted(all_ks))
    if not plotted:
        ax.text(
            0.5,
            0.5,
            "no oracle-setting results\n(run with --distractors 0..9 for the curve)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=9,
            color="#666",
        )
    else:
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel("distractor documents K (oracle + K)")
    ax.set_ylabel("F1 (%)")
    ax.set_title("Robustness to distractors")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Files


def _per_question(systems: Sequence[SystemReport]) -> list[dict[str, Any]]:
    """One row per question: the gold answers and every system's prediction and scores, ordered by id."""
    rows: dict[str, dict[str, Any]] = {}
    for s in systems:
        for r in s.records:
            row = rows.setdefault(
                r["id"], {"id": r["id"], "question": r["question"], "answers": r["answers"], "systems": {}}
            )
            row["systems"][s.name] = {
                "prediction": r.get("prediction"),
                "generation": r.get("generation"),
                "em": r.get("em"),
                "f1": r.get("f1"),
            }
    return [rows[k] for k in sorted(rows)]


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8} td.ok{background:#e8f6e8} td.bad{background:#fbeaea}
img{max-width:100%;margin:.5rem 1rem .5rem 0} .muted{color:#777;font-size:.85rem}
"""


def _html_questions(rows: list[dict[str, Any]], names: list[str], limit: int) -> str:
    header = "<tr><th>question</th><th>gold</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    body = []
    for row in rows[:limit]:
        cells = [
            f"<td>{html.escape(row['question'])}<div class='muted'>{html.escape(row['id'])}</div></td>",
            f"<td>{html.escape(' | '.join(row['answers']) or '(unanswerable)')}</td>",
        ]
        for name in names:
            out = row["systems"].get(name)
            if out is None:
                cells.append("<td>–</td>")
                continue
            css = "ok" if (out.get("f1") or 0) >= 0.5 else "bad"
            title = html.escape(out.get("generation") or "", quote=True)
            cells.append(
                f"<td class='{css}' title=\"{title}\">{html.escape(out.get('prediction') or '')}"
                f"<div class='muted'>F1 {100 * (out.get('f1') or 0):.0f}</div></td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        f"<p class='muted'>first {limit} of {len(rows)} questions; all in per_question.jsonl</p>"
        if len(rows) > limit
        else ""
    )
    return f"<table>{header}{''.join(body)}</table>{more}"


def write_report(
    systems: Sequence[SystemReport],
    out_dir: str | Path,
    title: str = "ragtune evaluation",
    data: dict[str, Any] | None = None,
    max_html_questions: int = 100,
) -> dict[str, Path]:
    """Write report.md, report.json, f1_per_system.png, f1_vs_k.png, report.html and per-question outputs.

    Returns the paths by kind. `data` describes the question set (format, path, split, limit) for the header.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["f1_per_system"] = plot_f1_per_system(systems, out / "f1_per_system.png")
    paths["f1_vs_k"] = plot_f1_vs_k(systems, out / "f1_vs_k.png")

    header, rows = headline_rows(systems)
    curve_header, curve_table = curve_rows(systems)
    data = data or {}
    data_line = ", ".join(f"{k}: {v}" for k, v in data.items() if v is not None)

    md = [f"# {title}", ""]
    if data_line:
        md += [f"Data: {data_line}", ""]
    md += [_markdown_table(header, rows), ""]
    if curve_table:
        md += ["## F1 against the number of distractors", "", _markdown_table(curve_header, curve_table), ""]
    md += ["![F1 per system](f1_per_system.png)", "", "![F1 against K](f1_vs_k.png)", ""]
    md += ["Per-question outputs: `per_question.jsonl` and `predictions/<system>.jsonl`.", ""]
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(md), encoding="utf-8")

    write_json_atomic(
        out / "report.json",
        {
            "title": title,
            "data": data,
            "systems": [
                {
                    "name": s.name,
                    "system": s.system,
                    "scores": s.scores,
                    "curve": {str(k): v for k, v in sorted(s.curve.items())},
                }
                for s in systems
            ],
        },
    )
    paths["json"] = out / "report.json"

    pred_dir = out / "predictions"
    pred_dir.mkdir(exist_ok=True)
    for s in systems:
        with open(pred_dir / f"{_file_name(s.name)}.jsonl", "w", encoding="utf-8") as f:
            for r in s.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    per_question = _per_question(systems)
    paths["per_question"] = out / "per_question.jsonl"
    with open(paths["per_question"], "w", encoding="utf-8") as f:
        for row in per_question:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='muted'>{html.escape(data_line)}</p>" if data_line else "",
        _html_table(header, rows),
    ]
    if curve_table:
        page += ["<h2>F1 against the number of distractors</h2>", _html_table(curve_header, curve_table)]
    page += [
        "<h2>Plots</h2>",
        _png_tag(paths["f1_per_system"], "F1 per system"),
        _png_tag(paths["f1_vs_k"], "F1 against K"),
        "<h2>Answers</h2>",
        _html_questions(per_question, [s.name for s in systems], max_html_questions),
        "</body></html>",
    ]
    paths["html"] = out / "report.html"
    paths["html"].write_text("\n".join(page), encoding="utf-8")
    return paths


def _file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip("-") or "system"
