"""The comparison report: several systems on the same questions, as markdown, JSON, PNG plots and one HTML page.

The HTML page inlines its PNGs as base64 so it can be mailed or attached to a pull request as a single file. Per-
question outputs are written next to it: a table of numbers says which system wins, the answers say why.

A difference in mean F1 on a few dozen questions can be noise, so every system is compared with the first one (the
baseline) and with the best base system by a paired bootstrap over questions; the report says whether the 95%
interval of the difference excludes zero. Degenerate output (loops to the token limit, chain-of-thought answers that
never reach `<ANSWER>:`) is counted per system beside F1, so a bad score says why it is bad.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune import metrics
from ragtune.workspace import write_json_atomic


@dataclass
class SystemReport:
    """One system's results: its description, its headline scores, per-question records and its robustness curve."""

    name: str
    system: dict[str, Any]
    scores: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    curve: dict[int, dict[str, Any]] = field(default_factory=dict)  # K -> scores (oracle sweep), may be empty
    # Every K's records of a sweep (empty: `records` are all): a question's paired score is its mean over K, the
    # same average the headline F1 of a sweep is.
    all_records: list[dict[str, Any]] = field(default_factory=list)

    def question_scores(self, key: str) -> dict[str, float]:
        """Per-question mean of `key` ("f1", "em"), keyed by question id."""
        return metrics.per_question_means(self.all_records or self.records, key)


# Columns of the headline table: (key in scores, header, format). A column nobody has is dropped.
_COLUMNS: list[tuple[str, str, str]] = [
    ("n", "n", "{:d}"),
    ("em", "EM", "{:.1%}"),
    ("f1", "F1", "{:.1%}"),
    ("f1_ci", "F1 95% CI", "ci"),
    ("degenerate_rate", "degenerate", "{:.1%}"),
    ("loop_rate", "loops", "{:.1%}"),
    ("no_answer_tag_rate", "no <ANSWER>:", "{:.1%}"),
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
    if key == "f1_ci":
        low, high = scores.get("f1_ci_low"), scores.get("f1_ci_high")
        return (low, high) if low is not None and high is not None else None
    if key == "no_answer_tag_rate" and scores.get(key) is None and "loop_rate" in scores:
        return "n/a"  # measured, but the prompt never asked for the tag (short-answer prompt)
    if key.endswith("@"):  # recall@5, ndcg@5: whatever k the run used
        for name, value in scores.items():
            if name.startswith(key):
                return value
        return None
    return scores.get(key)


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt == "ci":
        return f"[{100 * value[0]:.1f}, {100 * value[1]:.1f}]"
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


# ---------------------------------------------------------------------------------------------------------------------
# Significance: paired bootstrap of each system against the baseline and against the best base system


def base_systems(systems: Sequence[SystemReport]) -> list[SystemReport]:
    """The systems that count as "base" for `vs_best_baseline`.

    Those without an adapter when the comparison mixes adapters and none (base model under several prompts versus
    a tuned one); otherwise every system but the last (the last is the one being tried). Empty for one system.
    """
    if len(systems) < 2:
        return []
    plain = [s for s in systems if not s.system.get("adapter")]
    if plain and len(plain) < len(systems):
        return plain
    return list(systems[:-1])


def paired_entry(
    base: SystemReport, other: SystemReport, resamples: int = metrics.BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any] | None:
    """`other` minus `base` on the questions both answered: F1 and EM differences in points (x100, as the tables
    print them) with their paired 95% bootstrap interval, and whether it excludes zero. None without shared questions.
    """
    base_f1, other_f1 = base.question_scores("f1"), other.question_scores("f1")
    ids = sorted(set(base_f1) & set(other_f1))
    if not ids:
        return None
    entry: dict[str, Any] = {"baseline": base.name, "n": len(ids)}
    for key in ("f1", "em"):
        a, b = base.question_scores(key), other.question_scores(key)
        shared = [i for i in ids if i in a and i in b]
        if not shared:
            continue
        diff, low, high = metrics.paired_bootstrap(
            [100 * a[i] for i in shared], [100 * b[i] for i in shared], resamples=resamples, seed=seed
        )
        entry.update({f"{key}_diff": diff, f"{key}_ci_low": low, f"{key}_ci_high": high,
                      f"{key}_excludes_zero": metrics.excludes_zero(low, high)})
    entry["summary"] = _summary(entry, "f1")
    return entry


def _summary(entry: dict[str, Any], key: str) -> str:
    if f"{key}_diff" not in entry:
        return "–"
    verdict = "excludes 0" if entry[f"{key}_excludes_zero"] else "includes 0"
    return (f"{entry[f'{key}_diff']:+.1f} {key.upper()} [{entry[f'{key}_ci_low']:+.1f}, "
            f"{entry[f'{key}_ci_high']:+.1f}], {verdict}")


def _mean_f1(system: SystemReport) -> float:
    f1 = system.scores.get("f1")
    return float(f1) if isinstance(f1, int | float) else -1.0


def paired_comparisons(
    systems: Sequence[SystemReport], resamples: int = metrics.BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Every system against the first (`paired_vs_baseline`) and every non-base system against the best base system
    by mean F1 (`vs_best_baseline`); `significance` says how (method, resamples, seed, unit, which systems are base).
    """
    bases = base_systems(systems)
    best = max(bases, key=_mean_f1) if bases else None
    result: dict[str, Any] = {
        "significance": {
            "method": "paired percentile bootstrap over questions (the same resampled questions for both systems)",
            "resamples": resamples,
            "seed": seed,
            "confidence": metrics.BOOTSTRAP_CONFIDENCE,
            "unit": "points: F1 and EM x 100, system minus baseline",
            "baseline": systems[0].name if systems else None,
            "base_systems": [s.name for s in bases],
            "best_baseline": best.name if best else None,
        },
        "paired_vs_baseline": {},
        "vs_best_baseline": {},
    }
    for s in systems[1:]:
        entry = paired_entry(systems[0], s, resamples, seed)
        if entry is not None:
            result["paired_vs_baseline"][s.name] = entry
    if best is not None:
        for s in systems:
            if s in bases:
                continue
            entry = paired_entry(best, s, resamples, seed)
            if entry is not None:
                result["vs_best_baseline"][s.name] = entry
    return result


def paired_rows(comparisons: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the significance table (markdown, HTML and terminal); a vs-best row that repeats the
    vs-baseline row (the best base system is the first) is shown once."""
    header = ["system", "against", "n", "ΔF1 [95% CI]", "F1 significant", "ΔEM [95% CI]", "EM significant"]
    rows: list[list[str]] = []
    seen: set[tuple[str, str]] = set()
    for block in ("paired_vs_baseline", "vs_best_baseline"):
        for name, e in comparisons.get(block, {}).items():
            if (name, e["baseline"]) in seen:
                continue
            seen.add((name, e["baseline"]))
            against = e["baseline"] + (" (best base)" if block == "vs_best_baseline" else " (baseline)")
            row = [name, against, str(e["n"])]
            for key in ("f1", "em"):
                if f"{key}_diff" not in e:
                    row += ["–", "–"]
                    continue
                row.append(f"{e[f'{key}_diff']:+.1f} [{e[f'{key}_ci_low']:+.1f}, {e[f'{key}_ci_high']:+.1f}]")
                row.append("yes (excludes 0)" if e[f"{key}_excludes_zero"] else "no (includes 0)")
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
    def cell(text: str) -> str:  # "<ANSWER>:" would render as an unknown HTML tag, i.e. not at all
        return text.replace("|", "\\|").replace("<", "&lt;")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
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
    # The 95% interval of mean F1 as an error bar, where the scores carry one (a bar without it has none).
    err = [
        [max(0.0, v - 100 * s.scores["f1_ci_low"]) if s.scores.get("f1_ci_low") is not None else 0.0
         for v, s in zip(f1, systems, strict=True)],
        [max(0.0, 100 * s.scores["f1_ci_high"] - v) if s.scores.get("f1_ci_high") is not None else 0.0
         for v, s in zip(f1, systems, strict=True)],
    ]
    ax.bar([x - 0.2 for x in xs], f1, width=0.4, label="F1 (95% CI)", color="#3b6ea8", yerr=err, capsize=3,
           error_kw={"elinewidth": 1, "ecolor": "#333"})
    ax.bar([x + 0.2 for x in xs], em, width=0.4, label="EM", color="#9cc3e6")
    for x, value, up in zip(xs, f1, err[1], strict=True):
        ax.text(x - 0.2, value + up + 0.5, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, max([*(v + u for v, u in zip(f1, err[1], strict=True)), *em, 1.0]) * 1.2 + 1)
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
                "looped": r.get("looped"),
                "answer_tag": r.get("answer_tag"),
                "answer_tag_expected": r.get("answer_tag_expected"),
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
            flags = " · loop" if out.get("looped") else ""
            if out.get("answer_tag_expected") and out.get("answer_tag") is False:
                flags += " · no <ANSWER>:"
            cells.append(
                f"<td class='{css}' title=\"{title}\">{html.escape(out.get('prediction') or '')}"
                f"<div class='muted'>F1 {100 * (out.get('f1') or 0):.0f}{html.escape(flags)}</div></td>"
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
    comparisons: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write report.md, report.json, f1_per_system.png, f1_vs_k.png, report.html and per-question outputs.

    Returns the paths by kind. `data` describes the question set (format, path, split, limit) for the header.
    `comparisons` is `paired_comparisons(systems)` when the caller already computed it (it is computed otherwise).
    """
    if comparisons is None:
        comparisons = paired_comparisons(systems)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["f1_per_system"] = plot_f1_per_system(systems, out / "f1_per_system.png")
    paths["f1_vs_k"] = plot_f1_vs_k(systems, out / "f1_vs_k.png")

    header, rows = headline_rows(systems)
    curve_header, curve_table = curve_rows(systems)
    paired_header, paired_table = paired_rows(comparisons)
    sig = comparisons["significance"]
    paired_note = (
        f"Paired bootstrap over the same questions ({sig['resamples']:,} resamples, seed {sig['seed']}), differences "
        f"in points (F1 and EM x 100), system minus the system it is compared with; significant when the 95% interval "
        f"excludes 0. Base systems: {', '.join(sig['base_systems']) or '–'}."
    )
    degenerate_note = (
        "degenerate: the share of answers that loop (ran to the token limit ending in >= 3 copies of one repeated "
        "unit) or never reach `<ANSWER>:` although the prompt asks for it; no <ANSWER>: is n/a for short-answer "
        "prompts, which do not ask for it."
    )
    has_degenerate = any("loop_rate" in s.scores for s in systems)
    data = data or {}
    data_line = ", ".join(f"{k}: {v}" for k, v in data.items() if v is not None)

    md = [f"# {title}", ""]
    if data_line:
        md += [f"Data: {data_line}", ""]
    md += [_markdown_table(header, rows), ""]
    if has_degenerate:
        md += [degenerate_note.replace("no <ANSWER>:", "`no <ANSWER>:`"), ""]
    if paired_table:
        md += ["## Paired differences (95% bootstrap CI)", "", _markdown_table(paired_header, paired_table), "",
               paired_note, ""]
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
            **comparisons,
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
        f"<p class='muted'>{html.escape(degenerate_note)}</p>" if has_degenerate else "",
    ]
    if paired_table:
        page += ["<h2>Paired differences (95% bootstrap CI)</h2>", _html_table(paired_header, paired_table),
                 f"<p class='muted'>{html.escape(paired_note)}</p>"]
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
