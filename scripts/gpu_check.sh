#!/usr/bin/env bash
# The GPU path, end to end on a small config in minutes: CUDA bf16 LoRA training, QLoRA 4-bit (bitsandbytes),
# SDPA / FlashAttention generation, vLLM evaluation and a vLLM-backed `ragtune serve`. Writes one JSON file
# (default benchmarks/results/gpu.json): per check ok / failed / skipped with the reason, seconds and key figures.
#
#   scripts/gpu_check.sh                  # run every check (skipped, with the reason, where the GPU or a package is missing)
#   scripts/gpu_check.sh --dry-run        # print each check's command, run nothing
#   scripts/gpu_check.sh --only bf16_lora,vllm_eval --steps 20 --questions 10 --out /tmp/gpu.json
#
# Environment: PYTHON / RAGTUNE (default .venv/bin/python, .venv/bin/ragtune), GPU_CHECK_WS (workspace, default
# /tmp/ragtune-gpu-check), GPU_CHECK_PORT (serve check, default 8765). Without a CUDA GPU every check is skipped and
# the file says so: the CPU test suite runs this script that way and checks its commands against the CLI.
set -u

DRY=0
OUT=benchmarks/results/gpu.json
STEPS=30
QUESTIONS=20
ONLY=""
PY=${PYTHON:-.venv/bin/python}
RT=${RAGTUNE:-.venv/bin/ragtune}
WS=${GPU_CHECK_WS:-/tmp/ragtune-gpu-check}
PORT=${GPU_CHECK_PORT:-8765}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --questions) QUESTIONS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

DATA=examples/hotpotqa_demo/hotpotqa_300.json
MINI=examples/hotpotqa_mini/hotpotqa_mini.json
ADAPTER=$WS/train/gpu-lora/adapter
RES=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$RES"' EXIT

# Why a check cannot run here (empty when it can): no CUDA, or a missing package.
has_cuda() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
has_module() { "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" 2>/dev/null; }
CUDA_REASON=""
[ "$DRY" = 1 ] || has_cuda || CUDA_REASON="no CUDA GPU on this machine (torch.cuda.is_available() is False)"
need() {  # need MODULE HINT...: the reason a check is skipped, or nothing
  if [ -n "$CUDA_REASON" ]; then echo "$CUDA_REASON"; return; fi
  [ "$DRY" = 1 ] && return
  local module=$1; shift
  [ -z "$module" ] || has_module "$module" || echo "$*"
}

# check NAME TIMEOUT_S SKIP_REASON COMMAND: run COMMAND (bash), its stdout -> NAME.out, stderr -> NAME.log; the
# figures of a check are the JSON its command writes to $RES/NAME.json.
check() {
  local name=$1 limit=$2 skip=$3 cmd=$4
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
  if [ "$DRY" = 1 ]; then printf '%s: %s\n' "$name" "$cmd"; return; fi
  if [ -n "$skip" ]; then
    "$PY" -c 'import json, sys; json.dump({"status": "skipped", "reason": sys.argv[2], "seconds": 0}, open(sys.argv[1], "w"))' \
      "$RES/$name.status" "$skip"
    echo "[gpu_check] $name: skipped ($skip)" >&2
    return
  fi
  echo "[gpu_check] $name: running (limit ${limit}s)" >&2
  local start end rc
  start=$(date +%s.%N)
  RES="$RES" timeout "$limit" bash -c "$cmd" >"$RES/$name.out" 2>"$RES/$name.log"
  rc=$?
  end=$(date +%s.%N)
  "$PY" - "$RES" "$name" "$rc" "$start" "$end" <<'EOF'
import json, sys
res, name, rc, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
log = open(f"{res}/{name}.log", errors="replace").read().strip().splitlines()
status = {"status": "ok" if rc == 0 else "failed", "seconds": round(end - start, 1), "exit_code": rc}
if rc != 0:
    status["reason"] = "timed out" if rc == 124 else (log[-1][-300:] if log else f"exit code {rc}")
json.dump(status, open(f"{res}/{name}.status", "w"))
EOF
  echo "[gpu_check] $name: $("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"])' "$RES/$name.status")" >&2
}

TRAIN="$RT train sft --workspace $WS --overwrite --max-steps $STEPS --batch-size 8 --grad-accum 1 --lr 3e-4 --max-length 768 --lora-dropout 0 --seed 0 --json"
EVAL="$RT eval --workspace $WS --data hotpotqa $DATA --limit $QUESTIONS --prompt cot --distractors 1 --max-new-tokens 160 --json"

check prepare 900 "$(need '' )" \
  "$RT ingest $MINI --workspace $WS --tenant gpu && $RT synth from-qa hotpotqa $DATA --workspace $WS --cot evidence-short --distractors 1 --p-oracle 1.0 --overwrite"
check cuda 60 "$(need '' )" \
  "$PY -c 'import json, os, torch; p = torch.cuda.get_device_properties(0); json.dump({\"gpu\": p.name, \"memory_gb\": round(p.total_memory / 2**30, 1), \"torch\": torch.__version__, \"cuda\": torch.version.cuda, \"bf16\": torch.cuda.is_bf16_supported()}, open(os.environ[\"RES\"] + \"/cuda.json\", \"w\"))'"
check bf16_lora 900 "$(need '' )" \
  "$TRAIN --name gpu-lora --method lora --bf16 on > \$RES/bf16_lora.json"
check qlora 900 "$(need bitsandbytes 'QLoRA needs bitsandbytes: pip install bitsandbytes')" \
  "$TRAIN --name gpu-qlora --method qlora --bf16 on > \$RES/qlora.json"
check attention 600 "$(need '' )" \
  "$PY scripts/gpu_check_probes.py attention > \$RES/attention.json"
check transformers_eval 900 "$(need '' )" \
  "$EVAL --adapter $ADAPTER --dtype auto --run-name gpu-tf > \$RES/transformers_eval.json"
check vllm_eval 900 "$(need vllm 'pip install vllm')" \
  "$EVAL --adapter $ADAPTER --engine vllm --run-name gpu-vllm > \$RES/vllm_eval.json"
check vllm_serve 900 "$(need vllm 'pip install vllm')" \
  "KEY=\$($RT tenants add gpu --workspace $WS | tail -n 1) && ($RT serve --workspace $WS --engine vllm --adapter $ADAPTER --port $PORT & echo \$! > \$RES/serve.pid) && $PY scripts/gpu_check_probes.py serve http://127.0.0.1:$PORT \"\$KEY\" > \$RES/vllm_serve.json; rc=\$?; kill \$(cat \$RES/serve.pid) 2>/dev/null; exit \$rc"

[ "$DRY" = 1 ] && exit 0
mkdir -p "$(dirname "$OUT")"
"$PY" - "$RES" "$OUT" "$STEPS" "$QUESTIONS" <<'EOF'
import json, pathlib, sys, time
res, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
checks = {}
for status in sorted(res.glob("*.status"), key=lambda p: p.stat().st_mtime):
    name = status.stem
    entry = json.loads(status.read_text())
    figures = res / f"{name}.json"
    if figures.exists() and figures.stat().st_size:
        try:
            entry["figures"] = json.loads(figures.read_text())
        except json.JSONDecodeError:
            entry["figures_error"] = "not JSON: " + figures.read_text()[:200]
    checks[name] = entry
summary = {s: sum(c["status"] == s for c in checks.values()) for s in ("ok", "failed", "skipped")}
doc = {"benchmark": "GPU path: bf16 LoRA, QLoRA, attention kernels, vLLM eval and serve (scripts/gpu_check.sh)",
       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": int(sys.argv[3]),
       "questions": int(sys.argv[4]), "summary": summary, "checks": checks}
out.write_text(json.dumps(doc, indent=2) + "\n")
print(f"[gpu_check] wrote {out}: {summary}", file=sys.stderr)
EOF
