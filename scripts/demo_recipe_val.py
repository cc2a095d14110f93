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
    parser.add_argument("--ragtune", default=str(ROOT / ".venv" / "bin" / "ragtune"))
    args = parser.parse_args()
    if not args.source.exists():
        raise SystemExit(f"{args.source} not found: this script needs ../shared/data/hotpotqa beside the repo")
    args.out.mkdir(parents=True, exist_ok=True)
    questions = args.out / "questions.json"
    n = build_questions(args.source, args.questions, questions)
    summary = {}
    for spec in args.candidate:
        name, _, rest = spec.partition(":")
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
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1)[:20000])


if __name__ == "__main__":
    main()
