"""`ragtune init` / `ragtune run CONFIG.yaml`: config validation, the starter file, the state file, and a real
end-to-end run on a tiny config (bundled models, real LanceDB) that a second run skips and a changed setting
re-runs from the changed stage on."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import HOTPOT_MINI, is_eval_id
from typer.testing import CliRunner

from ragtune.run.config import ConfigError, load_config, parse_config
from ragtune.run.state import RunState

MINIMAL = {"ingest": {"paths": ["docs"]}}


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="ragtune.yaml")
    return str(info.value)


def test_unknown_key_is_named_with_the_allowed_ones():
    message = _error({"ingest": {"paths": ["docs"], "chunk_sise": 200}})
    assert "unknown key 'ingest.chunk_sise'" in message
    assert "chunk_size" in message and "paths" in message  # the allowed keys are listed
    nested = _error({**MINIMAL, "synth": {"method": "raft", "raft": {"questions": 2}}})
    assert "unknown key 'synth.raft.questions'" in nested and "questions_per_chunk" in nested
    top = _error({**MINIMAL, "trian": {}})
    assert "unknown key 'trian'" in top and "train" in top


def test_bad_type_and_bad_system_are_errors():
    assert "train.max_steps" in _error({**MINIMAL, "synth": {"method": "raft"}, "train": {"max_steps": "many"}})
    assert "ingest.chunker" in _error({"ingest": {"paths": ["d"], "chunker": "words"}})
    system = _error({**MINIMAL, "compare": {"data": {"format": "hotpotqa", "path": "q.json"},
                                            "systems": [{"name": "a", "promt": "cot"}]}})
    assert "promt" in system and "prompt" in system
    # the trainer's own checks run on load, with the message its command gives
    lora = _error({**MINIMAL, "synth": {"method": "raft"}, "train": {"lora": {"r": 0}}})
    assert "ragtune.yaml: train.lora.r: --lora-r must be >= 1, got 0" in lora
    assert "--micro-batch must divide" in _error({**MINIMAL, "synth": {"method": "raft"},
                                                  "train": {"batch_size": 4, "micro_batch": 3}})
    assert "unknown key 'train.lora.rank'" in _error({**MINIMAL, "synth": {"method": "raft"},
                                                      "train": {"lora": {"rank": 8}}})
    # a chain that cannot run: the tuned system needs a train section
    assert "no train section" in _error({**MINIMAL, "compare": {"data": {"format": "hotpotqa", "path": "q.json"},
                                                                "systems": [{"name": "t", "adapter": "trained"}]}})


def test_relative_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "sub" / "ragtune.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"workspace": {"path": "ws"}, "ingest": {"paths": ["docs"]}}), encoding="utf-8")
    cfg = load_config(path)
    assert cfg.workspace_dir == (tmp_path / "sub" / "ws").resolve()
    assert cfg.resolve(cfg.ingest.paths[0]) == (tmp_path / "sub" / "docs").resolve()


def test_init_writes_a_starter_that_validates(tmp_path):
    from ragtune.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    written = tmp_path / "proj" / "ragtune.yaml"
    text = written.read_text(encoding="utf-8")
    assert text.count("\n#") > 10  # commented
    cfg = load_config(written)
    assert cfg.enabled() == ["ingest", "search", "synth", "train", "compare"]
    assert runner.invoke(app, ["init", str(tmp_path / "proj")]).exit_code == 2  # never overwritten silently
    check = runner.invoke(app, ["run", str(written), "--check"])
    assert check.exit_code == 0 and "stages: ingest, search, synth, train, compare" in check.output


def test_the_demo_and_own_docs_examples_validate():
    root = Path(__file__).resolve().parents[1] / "examples"
    demo = load_config(root / "demo" / "ragtune.yaml")
    assert demo.train is not None and demo.train.max_steps == 100 and demo.compare is not None
    assert demo.compare.limit == 48 and len(demo.compare.systems) == 3
    own = load_config(root / "own_docs" / "ragtune.yaml")
    assert own.synth is not None and own.synth.method == "raft" and (own.synth.teacher or "").startswith("openai:")
    assert own.retriever is not None and own.retriever.trainer_config().tau == 0.01
    # the trainers' own settings are checked too (they are read only when a retriever section exists)
    bad = {**MINIMAL, "synth": {"method": "raft"}, "retriever": {"method": "lsr", "lsr": {"topk": 3}}}
    message = _error(bad)
    assert "topk" in message and "top_k" in message


def test_dual_loop_retriever_is_taught_by_the_trained_generator():
    from ragtune.run.stages import adapter_dir, plan_retriever

    loop = {**MINIMAL, "synth": {"method": "raft"}, "train": {"name": "gen"},
            "retriever": {"method": "lsr", "lm": "trained", "lsr": {"top_k": 4}}}
    cfg = parse_config(loop)
    assert cfg.enabled() == ["ingest", "synth", "train", "retriever"]  # LM-ft runs before R-ft
    assert plan_retriever(cfg).upstream == ["ingest", "synth", "train"]  # a retrained generator retrains it
    assert adapter_dir(cfg).parts[-3:] == ("train", "gen", "adapter")
    base = parse_config({**loop, "retriever": {"method": "lsr"}})
    assert plan_retriever(base).upstream == ["ingest", "synth"]
    assert "needs a train section" in _error({**loop, "train": None})
    assert "needs method: lsr" in _error({**loop, "retriever": {"method": "contrastive", "lm": "trained"}})
    assert "drop lsr.lm" in _error({**loop, "retriever": {"method": "lsr", "lm": "trained",
                                                          "lsr": {"lm_adapter": "x"}}})


def test_state_records_interrupted_and_finished_stages(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("a\n", encoding="utf-8")
    state = RunState(tmp_path)
    state.start("synth", "k1", "s", {}, {})
    assert RunState(tmp_path).interrupted("synth", "k1") and not RunState(tmp_path).unchanged("synth", "k1")
    assert not RunState(tmp_path).interrupted("synth", "k2")  # other settings: a fresh start, not a resume
    state.finish("synth", [out])
    assert stat.S_IMODE(os.stat(tmp_path / "run_state.json").st_mode) == 0o600
    assert RunState(tmp_path).unchanged("synth", "k1")
    out.write_text("b\n", encoding="utf-8")  # its output edited by hand: not unchanged any more
    assert not RunState(tmp_path).unchanged("synth", "k1")


def test_only_and_from_select_and_force_stages():
    from ragtune.run.pipeline import select_stages
    from ragtune.run.stages import StageError

    cfg = parse_config({**MINIMAL, "synth": {"method": "raft"}, "train": {},
                        "compare": {"data": {"format": "raft", "path": "r.jsonl"},
                                    "systems": [{"name": "t", "adapter": "trained"}]}})
    assert select_stages(cfg) == (["ingest", "synth", "train", "compare"], set())
    assert select_stages(cfg, from_stage="train") == (["ingest", "synth", "train", "compare"], {"train", "compare"})
    assert select_stages(cfg, only=["synth", "compare"], from_stage="compare") == (["synth", "compare"], {"compare"})
    with pytest.raises(StageError, match="not configured"):
        select_stages(cfg, only=["retriever"])
    with pytest.raises(StageError, match="unknown stage"):
        select_stages(cfg, from_stage="report")


# ---- end to end --------------------------------------------------------------------------------------------------


def _tiny_config(tmp_path: Path) -> Path:
    """Six HotpotQA questions (2 held out) for synth and compare, three small documents indexed, 1 training step,
    2 eval questions of at most 8 new tokens."""
    questions = json.loads(HOTPOT_MINI.read_text(encoding="utf-8"))
    held_out = [q for q in questions if is_eval_id(q["_id"])][:2]
    train = [q for q in questions if not is_eval_id(q["_id"])][:4]
    data = tmp_path / "tiny.json"
    data.write_text(json.dumps(train + held_out), encoding="utf-8")
    docs = tmp_path / "docs"
    docs.mkdir()
    for q in held_out + train[:1]:
        title, sentences = q["context"][0]
        (docs / f"{q['_id']}.txt").write_text(f"{title}\n\n{''.join(sentences)}\n", encoding="utf-8")
    config = {
        "workspace": {"path": "ws"},
        "ingest": {"paths": ["docs"]},
        "search": {"queries": [held_out[0]["question"]], "k": 2},
        "synth": {"method": "from-qa", "data": {"format": "hotpotqa", "path": "tiny.json"},
                  "from_qa": {"cot": "evidence-short", "distractors": 1, "p_oracle": 1.0, "distractor_source": "own"},
                  "export": [{"format": "openai-chat", "out": "chat.jsonl", "min_examples": 1}]},
        "train": {"name": "tiny", "max_steps": 1, "batch_size": 1, "grad_accum": 1, "max_length": 768,
                  "lora": {"r": 4, "dropout": 0.0}},
        "compare": {"data": {"format": "hotpotqa", "path": "tiny.json"}, "limit": 2, "title": "tiny",
                    "defaults": {"setting": "oracle", "distractors": 1, "max_new_tokens": 8},
                    "systems": [{"name": "base", "prompt": "short"},
                                {"name": "tuned", "prompt": "cot", "adapter": "trained"}]},
    }
    path = tmp_path / "ragtune.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _run(config: Path, *args: str) -> tuple[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ragtune", "run", str(config), *args], capture_output=True,
                          text=True, env=env, timeout=600)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output, seconds


@pytest.mark.slow
def test_run_skips_unchanged_stages_and_reruns_from_a_changed_one(tmp_path):
    config = _tiny_config(tmp_path)
    ws = tmp_path / "ws"

    first, _ = _run(config)
    for stage in ("ingest", "search", "synth", "train", "compare"):
        assert f"{stage}: running (first run)" in first and f"{stage}: done" in first
    assert (ws / "train" / "tiny" / "adapter" / "adapter_model.safetensors").exists()
    assert (ws / "chat.jsonl").stat().st_size > 0
    report = json.loads((ws / "report" / "report.json").read_text(encoding="utf-8"))
    assert "tuned" in json.dumps(report) and "base" in json.dumps(report)
    for private in (ws / "run_state.json", ws / "run.log"):
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert "train: done" in (ws / "run.log").read_text(encoding="utf-8")

    second, seconds = _run(config)
    for stage in ("ingest", "search", "synth", "train", "compare"):
        assert f"{stage}: unchanged" in second and f"{stage}: running" not in second
    assert "0 stages ran, 5 skipped" in second
    assert seconds < 30, f"a run that skips every stage took {seconds:.1f}s"

    # one more training step: ingest, search and synth are skipped, train and compare (its input) run again
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["train"]["max_steps"] = 2
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    third, _ = _run(config)
    for stage in ("ingest", "search", "synth"):
        assert f"{stage}: unchanged" in third
    assert "train: running (settings changed)" in third
    assert "compare: running (new outputs of train)" in third and "compare: done" in third
    steps = json.loads((ws / "run_state.json").read_text(encoding="utf-8"))["stages"]
    assert all(record["status"] == "done" for record in steps.values())
