"""The command package `ragtune.cli`: every command is registered, by name, and a stage whose command module cannot
be imported is an error at start-up, never a command that silently goes missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

# The command tree users, the Makefile and the tests call: renaming or dropping one is a breaking change.
COMMANDS = {"ingest", "search", "models", "synth", "export", "eval", "compare", "train", "export-model", "serve",
            "tenants", "init", "run", "eval-retrieval"}
SUBCOMMANDS = {
    "synth": {"raft", "from-qa", "pairs", "preferences", "from-feedback"},
    "train": {"sft", "dpo", "dap", "retriever", "reranker"},
    "tenants": {"add", "list", "remove"},
}


def _tree():
    from ragtune.cli import app

    return typer.main.get_command(app)


def test_every_command_is_registered():
    root = _tree()
    assert set(root.commands) == COMMANDS
    for group, names in SUBCOMMANDS.items():
        assert set(root.commands[group].commands) == names


def _options(command) -> dict[str, tuple[str, ...]]:
    return {p.name: tuple(p.opts) for p in command.params}


def test_shared_options_are_the_same_declaration_everywhere():
    """--workspace is -w everywhere and reads $RAGTUNE_WORKSPACE where it has a default; the search options of
    `search` and `eval` are one set."""
    root = _tree()
    with_default = [root.commands[n] for n in ("ingest", "search", "eval", "compare")]
    with_default += [root.commands["train"].commands[n] for n in ("sft", "dpo", "dap")]
    with_default += [root.commands["serve"], *root.commands["tenants"].commands.values()]
    for command in with_default:
        (param,) = [p for p in command.params if p.name == "workspace"]
        assert set(param.opts) == {"--workspace", "-w"} and param.envvar == "RAGTUNE_WORKSPACE", command.name
    for name in ("raft", "from-qa", "pairs", "preferences", "from-feedback"):
        (param,) = [p for p in root.commands["synth"].commands[name].params if p.name == "workspace"]
        assert param.required, name
    search_options = {"retriever", "rerank", "rerank_candidates", "transform", "transform_model", "window", "parent",
                      "parent_level", "route"}
    search, evaluate = _options(root.commands["search"]), _options(root.commands["eval"])
    for name in search_options:
        assert search[name] == evaluate[name]
    for command in ("search", "models", "eval", "compare", "export-model"):
        assert _options(root.commands[command])["as_json"] == ("--json",)


@pytest.mark.parametrize("args", [["--help"], ["synth", "--help"], ["train", "sft", "--help"], ["eval", "--help"],
                                  ["run", "--help"], ["tenants", "--help"]])
def test_help_runs(args):
    from ragtune.cli import app

    result = CliRunner().invoke(app, args, prog_name="ragtune")
    assert result.exit_code == 0, result.output
    assert "Usage: ragtune" in result.output


@pytest.mark.parametrize("args, message", [
    (["--lora-r", "0"], "lora.r: --lora-r must be >= 1, got 0"),
    (["--batch-size", "4", "--micro-batch", "3"], "--micro-batch must divide --batch-size 4, got 3"),
    (["--lora-layers", "top:x"], "--lora-layers must be all, top:N or A-B"),
])
def test_a_bad_trainer_option_is_one_line_and_exit_code_2(tmp_path, args, message):
    """The trainer's settings are checked when they are built, before a model loads: one line, no traceback."""
    from ragtune.cli import app

    result = CliRunner().invoke(app, ["train", "sft", "--workspace", str(tmp_path), *args], prog_name="ragtune")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def _start(poisoned: str) -> subprocess.CompletedProcess:
    """`python -m ragtune --help` in a fresh interpreter where importing `poisoned` fails (as a missing dependency
    or a syntax error in that stage would)."""
    code = ("import sys, runpy\n"
            f"sys.modules[{poisoned!r}] = None  # import of this module now raises ImportError\n"
            "sys.argv = ['ragtune', '--help']\n"
            "runpy.run_module('ragtune', run_name='__main__')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("stage", ["ragtune.cli.synth", "ragtune.cli.train_retriever", "ragtune.cli.serve"])
def test_a_stage_that_fails_to_import_is_an_error_not_a_missing_command(stage):
    result = _start(stage)
    assert result.returncode != 0
    assert "ImportError" in result.stderr or "ModuleNotFoundError" in result.stderr, result.stderr[-2000:]
    assert "Usage" not in result.stdout  # no help listing printed without the stage


def test_the_unpoisoned_start_lists_every_command():
    """The control for the test above: the same start-up, nothing poisoned, prints the whole command list."""
    result = _start("ragtune_nothing_here")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in COMMANDS:
        assert name in result.stdout
