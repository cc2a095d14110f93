"""Does `make demo` prove the same thing on an idle and on a busy machine?

    python benchmarks/demo_robustness.py            # idle run, then busy run (a second process spins on one core)
    python benchmarks/demo_robustness.py --only busy

Each run is a real `make demo` in its own fresh workspace (`ragtune-workspace/demo-robustness-<mode>`), timed from
the first command to the report (setup excluded: `.venv` must already exist, `make setup` is timed apart). For each
run the script reads the demo's `report.json` and the adapter's `loss_curve.json` and writes, to
`benchmarks/results/demo_robustness.json`:

- `idle.seconds`, `busy.seconds`: wall time of the demo;
- `<mode>.f1_diff`, `<mode>.f1_diff_ci_low`, `<mode>.f1_diff_ci_high`: the tuned system minus the base model's best
  prompt, F1 x100, with the paired 95% bootstrap interval that `compare` computes;
- `<mode>.degenerate_rate` (and `loop_rate`, `no_answer_tag_rate`) of the tuned system;
- `loss_curve_max_abs_diff`: the largest per-step difference between the two adapters' training losses (the demo
  trains a fixed number of steps, so the two adapters must agree to 1e-3 however busy the machine was).

The busy load is what a laptop user has: one more process keeping one of the two cores at 100%.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TUNED = "RAFT-LoRA tuned"


def _spin() -> None:  # pragma: no cover - runs in the child
    while True:
        pass


def run_demo(mode: str, log_dir: Path) -> dict[str, Any]:
    workspace = ROOT / "ragtune-workspace" / f"demo-robustness-{mode}"
    shutil.rmtree(workspace, ignore_errors=True)
    hog = None
    if mode == "busy":
        hog = mp.get_context("spawn").Process(target=_spin, daemon=True)
        hog.start()
    log_path = log_dir / f"demo_robustness_{mode}.log"
    started = time.perf_counter()
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            rc = subprocess.call(["make", "demo", f"WORKSPACE={workspace}"], cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        if hog is not None:
            hog.terminate()
            hog.join()
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"seconds": round(seconds, 1), "rc": rc, "log": str(log_path.relative_to(ROOT))}
    demo = workspace / "demo"
    report_path = demo / "report" / "report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        entry = report.get("vs_best_baseline", {}).get(TUNED) or report.get("paired_vs_baseline", {}).get(TUNED, {})
        result.update({
            "best_base": entry.get("baseline"),
            "questions": entry.get("n"),
            "f1_diff": entry.get("f1_diff"),
            "f1_diff_ci_low": entry.get("f1_ci_low"),
            "f1_diff_ci_high": entry.get("f1_ci_high"),
            "f1_excludes_zero": entry.get("f1_excludes_zero"),
            "em_diff": entry.get("em_diff"),
            "em_diff_ci_low": entry.get("em_ci_low"),
        })
        result["systems"] = {}
        for system in report.get("systems", []):
            scores = system.get("scores", {})
            result["systems"][system["name"]] = {
                k: scores.get(k) for k in ("f1", "em", "degenerate_rate", "loop_rate", "no_answer_tag_rate", "n")
            }
        tuned = result["systems"].get(TUNED, {})
        for key in ("degenerate_rate", "loop_rate", "no_answer_tag_rate"):
            result[key] = tuned.get(key)
    curve_path = demo / "train" / "demo-raft" / "loss_curve.json"
    if curve_path.exists():
        result["loss_curve"] = json.loads(curve_path.read_text(encoding="utf-8"))
    summary_path = demo / "train" / "demo-raft" / "train_summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        result["train"] = {k: summary.get(k) for k in ("steps", "tokens", "seconds", "tokens_per_second",
                                                        "peak_memory_mb", "final_loss", "loss")}
    return result


def _losses(run: dict[str, Any]) -> list[float]:
    curve = run.get("loss_curve") or {}
    return [float(x) for x in curve.get("loss", [])]


def _commit() -> str:
    """The commit the demo ran at (`+dirty` when the tree had changes), so a figure can be traced to its code."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["idle", "busy"], default=None, help="run one mode; the other is kept "
                        "from the existing results file")
    parser.add_argument("--out", type=Path, default=RESULTS / "demo_robustness.json")
    args = parser.parse_args()
    # SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so run_demo's `finally` stops the busy run's spinning child
    # instead of leaving it to eat a core after the benchmark is gone
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not (ROOT / ".venv" / ".installed").exists():
        sys.exit("run `make setup` first: this benchmark times the demo, not the installation")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if args.only and args.out.exists():
        results = json.loads(args.out.read_text(encoding="utf-8"))
    results["machine"] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    results["commit"] = _commit()
    for mode in [args.only] if args.only else ["idle", "busy"]:
        print(f"make demo ({mode}) ...", flush=True)
        results[mode] = run_demo(mode, RESULTS)
        print(f"  {mode}: {results[mode]['seconds']:.0f} s, rc {results[mode]['rc']}, tuned minus best base F1 "
              f"{results[mode].get('f1_diff')} [{results[mode].get('f1_diff_ci_low')}, "
              f"{results[mode].get('f1_diff_ci_high')}]", flush=True)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    a, b = _losses(results.get("idle", {})), _losses(results.get("busy", {}))
    if a and b:
        results["loss_curve_steps"] = [len(a), len(b)]
        results["loss_curve_max_abs_diff"] = max(abs(x - y) for x, y in zip(a, b, strict=False)) if len(a) == len(
            b) else None
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")

    print()
    print("| run | seconds | tuned - best base F1 [95% CI] | excludes 0 | tuned degenerate | loss-curve max diff |")
    print("|---|---|---|---|---|---|")
    for mode in ("idle", "busy"):
        r = results.get(mode)
        if not r:
            continue
        f1 = (f"{r['f1_diff']:+.1f} [{r['f1_diff_ci_low']:+.1f}, {r['f1_diff_ci_high']:+.1f}]"
              if r.get("f1_diff") is not None else "–")
        degenerate = f"{r['degenerate_rate']:.1%}" if r.get("degenerate_rate") is not None else "–"
        print(f"| {mode} | {r['seconds']:.0f} | {f1} | {r.get('f1_excludes_zero')} | {degenerate} | "
              f"{results.get('loss_curve_max_abs_diff')} |")
    print(f"\nwritten {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
