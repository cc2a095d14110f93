"""Choose a demo training recipe on train-split questions, never on the demo's own held-out questions.

Why: the demo (`examples/demo/ragtune.yaml`) must finish in 15 minutes on a busy 2-core machine, and the only large
lever left is less training work (fewer steps, smaller batches). A cheaper recipe is acceptable only if it answers as
well as the 100-step one on questions the demo never evaluates. This script builds such a set (the first N HotpotQA
questions by id of `../shared/data/hotpotqa` that fall in ragtune's *train* hash split and are not among the demo's
300), writes one `ragtune run` config per candidate recipe (the demo's config with its train section changed and its
compare section pointed at that set), runs train + compare for each in its own workspace copied from an existing demo
workspace (so ingest and synth are reused, and the reference recipe reuses the demo's adapter), and writes each
candidate's per-system scores (F1, EM, degenerate rate) and paired intervals against the base model to
OUT/summary.json, also printed.

    python scripts/demo_recipe_val.py --demo-workspace ragtune-workspace/demo --out /tmp/recipe-val \
        --candidate s100:max_steps=100 --candidate s60:max_steps=60 --candidate b1:batch_size=1

Cost on the 2-core CPU: ~4 min of evaluation per candidate (60 questions) plus its training (~6 s per step at batch 2).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ragtune.metrics import paired_bootstrap
from ragtune.splits import split_of

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "examples" / "demo" / "ragtune.yaml"
DEMO_QUESTIONS = ROOT / "examples" / "hotpotqa_demo" / "hotpotqa_300.json"
SHARED = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"


def build_questions(source: Path, n: int, out: Path) -> int:
    demo = {r["_id"] for r in json.loads(DEMO_QUESTIONS.read_text())}
    rows = sorted((r for r in json.loads(source.read_text()) if r["_id"] not in demo and split_of(r["_id"]) == "train"),
                  key=lambda r: r["_id"])[:n]
    out.write_text(json.dumps(rows))
    return len(rows)


def candidate_config(name: str, changes: dict[str, str], questions: Path, workspace: Path, n: int) -> str:
    text = DEMO_CONFIG.read_text()
    for rel in ("../hotpotqa_mini/", "../hotpotqa_demo/"):
        text = text.replace(rel, f"{DEMO_CONFIG.parent.parent / rel[3:]}/")
    text = re.sub(r"(?m)^  path: \.\./\.\./ragtune-workspace/demo$", f"  path: {workspace}", text)
    head, _, _ = text.partition("\ncompare:")
    for key, value in changes.items():
        head, count = re.subn(rf"(?m)^  {re.escape(key)}: .*$", f"  {key}: {value}", head)
        if count != 1:
            raise SystemExit(f"--candidate {name}: train.{key} is not a top-level key of the demo's train section")
    return head + f"""
compare:
  data: {{format: hotpotqa, path: {questions}}}
  split: train
  limit: {n}
  title: "recipe {name} on train-split questions"
  out: report-val
  defaults: {{setting: oracle, distractors: 2, max_new_tokens: 160, dtype: auto}}
  systems:
    - {{name: base model short-answer prompt, prompt: short, max_new_tokens: 32}}
    - {{name: RAFT-LoRA tuned, prompt: cot, adapter: trained}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-workspace", type=Path, required=True, help="A finished demo workspace to copy.")
    parser.add_argument("--out", type=Path, required=True, help="Folder for configs, workspaces and logs.")
    parser.add_argument("--candidate", action="append", required=True,
                        help="NAME:key=value[,key=value] of the demo's train section, e.g. s60:max_steps=60.")
    parser.add_argument("--questions", type=int, default=60, help="Train-split questions to evaluate on.")
    parser.add_argument("--source", type=Path, default=SHARED, help="HotpotQA JSON to draw them from.")
    parser.add_argument("--save", type=Path, default=None,
                        help="Also write the compact table (e.g. benchmarks/results/demo_recipe_val.json).")
    parser.add_argument("--ragtune", default=str(ROOT / ".venv" / "bin" / "ragtune"))
    args = parser.parse_args()
    if not args.source.exists():
        raise SystemExit(f"{args.source} not found: this script needs ../shared/data/hotpotqa beside the repo")
    args.out.mkdir(parents=True, exist_ok=True)
    questions = args.out / "questions.json"
    n = build_questions(args.source, args.questions, questions)
    summary: dict = {}
    tuned: dict[str, dict] = {}
    changes_of: dict[str, str] = {}
    for spec in args.candidate:
        name, _, rest = spec.partition(":")
        changes_of[name] = rest
        changes = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
        workspace = args.out / f"ws-{name}"
        if not workspace.exists():
            shutil.copytree(args.demo_workspace, workspace)
        config = args.out / f"{name}.yaml"
        config.write_text(candidate_config(name, changes, questions, workspace, n))
        with open(args.out / f"{name}.log", "w") as log:
            rc = subprocess.call([args.ragtune, "run", str(config), "--only", "train", "--only", "compare"],
                                 stdout=log, stderr=subprocess.STDOUT)
        if rc:
            print(f"{name}: ragtune run failed (rc {rc}), see {args.out / (name + '.log')}", file=sys.stderr)
            continue
        report = json.loads((workspace / "report-val" / "report.json").read_text())
        summary[name] = {"systems": report["systems"], "paired_vs_baseline": report["paired_vs_baseline"]}
        tuned[name] = read_tuned(workspace)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    table = compact(summary, tuned, changes_of)
    table["questions"] = n
    print(json.dumps(table, indent=1))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(table, indent=1) + "\n")


def read_tuned(workspace: Path) -> dict[str, dict]:
    """The tuned system's per-question predictions, by question id (for the paired comparison of two recipes)."""
    path = workspace / "report-val" / "predictions" / "RAFT-LoRA-tuned.jsonl"
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


def compact(summary: dict, tuned: dict[str, dict], changes_of: dict[str, str]) -> dict:
    """Per candidate: the tuned system's scores, its paired F1 gain over the base prompt, and (after the first) its
    paired F1 difference from the first candidate on the same questions: the number a recipe is chosen by, beside
    the degenerate and loop rates, which must not rise."""
    out: dict = {"candidates": {}}
    first = next(iter(tuned), None)
    for name, entry in summary.items():
        scores = next(s["scores"] for s in entry["systems"] if s["name"] == "RAFT-LoRA tuned")
        row = {"changes": changes_of.get(name, ""),
               **{k: scores.get(k) for k in ("f1", "em", "degenerate_rate", "loop_rate", "quote_precision")},
               "vs_base": entry["paired_vs_baseline"]}
        if first is not None and name != first:
            ids = sorted(tuned[first])
            ref, cand = [tuned[first][i]["f1"] for i in ids], [tuned[name][i]["f1"] for i in ids]
            diff, low, high = paired_bootstrap(ref, cand)
            row[f"f1_minus_{first}"] = {"diff": 100 * diff, "ci_low": 100 * low, "ci_high": 100 * high}
        out["candidates"][name] = row
    return out


if __name__ == "__main__":
    main()
