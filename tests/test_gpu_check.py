"""scripts/gpu_check.sh cannot run its checks without a GPU; what can be checked here is that every command it would run
is one the CLI accepts (each option exists on that command) and that without CUDA it writes a gpu.json that says
every check was skipped and why."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
CHECKS = ["prepare", "cuda", "bf16_lora", "qlora", "attention", "transformers_eval", "vllm_eval", "vllm_serve"]


def _dry_run(*args: str) -> dict[str, str]:
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split(": ", 1) for line in out.splitlines() if line.strip())


def _ragtune_calls(command: str) -> list[list[str]]:
    """Every `ragtune ...` invocation in a shell line, as argument lists."""
    calls = []
    for part in command.replace("$(", " ; ").replace("(", " ; ").replace("&&", " ; ").replace("|", " ; ").split(";"):
        part = part.split(">")[0].strip().rstrip(")&").strip()
        if part.split(" ", 1)[0].endswith("/ragtune"):
            calls.append(shlex.split(part)[1:])
    return calls


def _click_command(args: list[str]):
    import typer

    from ragtune.cli import app

    command = typer.main.get_command(app)
    depth = 0
    while hasattr(command, "commands") and depth < len(args) and args[depth] in command.commands:
        command = command.commands[args[depth]]
        depth += 1
    return command, args[:depth]


def test_dry_run_lists_every_check_and_each_command_is_one_the_cli_accepts():
    commands = _dry_run("--steps", "7", "--questions", "5")
    assert list(commands) == CHECKS
    assert "--max-steps 7" in commands["bf16_lora"] and "--bf16 on" in commands["bf16_lora"]
    assert "--method qlora" in commands["qlora"] and "--limit 5" in commands["vllm_eval"]
    assert "--engine vllm" in commands["vllm_eval"] and "--engine vllm" in commands["vllm_serve"]
    calls = [c for cmd in commands.values() for c in _ragtune_calls(cmd)]
    assert len(calls) == 8  # ingest, synth, 2 x train, 2 x eval, tenants add, serve
    for call in calls:
        command, path = _click_command(call)
        assert path, f"not a ragtune command: {call}"
        options = {o for p in command.params for o in p.opts}
        unknown = [a for a in call if a.startswith("--") and a not in options]
        assert not unknown, f"ragtune {' '.join(path)} has no option {unknown}"
    assert _dry_run("--only", "qlora,cuda").keys() == {"qlora", "cuda"}


def test_probes_script_refuses_unknown_arguments():
    probe = subprocess.run([".venv/bin/python", "scripts/gpu_check_probes.py", "nonesuch"], cwd=ROOT,
                           capture_output=True, text=True)
    assert probe.returncode == 2 and "attention" in probe.stderr


def test_without_a_gpu_every_check_is_skipped_with_the_reason(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run scripts/gpu_check.sh itself")
    out = tmp_path / "gpu.json"
    subprocess.run(["bash", str(SCRIPT), "--out", str(out)], cwd=ROOT, capture_output=True, text=True, check=True,
                   env={"PATH": "/usr/bin:/bin", "GPU_CHECK_WS": str(tmp_path / "ws")})
    doc = json.loads(out.read_text())
    assert list(doc["checks"]) == CHECKS and doc["summary"] == {"ok": 0, "failed": 0, "skipped": len(CHECKS)}
    assert all("no CUDA GPU" in c["reason"] for c in doc["checks"].values())
    assert not (tmp_path / "ws").exists(), "nothing ran"
