"""Workspace artifact paths: one place names where each stage reads and writes, and the stages agree with it (a
stage that reads another's output in a different place would silently train or evaluate on nothing)."""

from __future__ import annotations

from ragtune.workspace import Workspace


def test_artifact_paths_are_under_the_root(tmp_path):
    ws = Workspace(tmp_path / "ws")
    root = tmp_path / "ws"
    assert ws.raft_path == root / "synth" / "raft.jsonl"
    assert ws.pairs_path == root / "synth" / "pairs.jsonl"
    assert ws.preferences_path == root / "synth" / "preferences.jsonl"
    assert ws.synth_path("raft") == ws.raft_path and ws.feedback_data_dir == root / "synth" / "feedback"
    assert ws.train_dir() == root / "train" and ws.train_dir("sft-raft-lora") == root / "train" / "sft-raft-lora"
    assert ws.lsr_cache_dir == root / "train" / "lsr-cache"
    assert ws.eval_dir() == root / "eval" and ws.compare_dir("base") == root / "eval" / "compare" / "base"
    assert ws.serve_dir == root / "serve" and ws.run_dir == root / "run"


def test_stages_read_each_other_where_the_workspace_says(tmp_path):
    from ragtune.eval.compare import compare_run_dir
    from ragtune.run.config import load_config
    from ragtune.run.stages import adapter_dir
    from ragtune.run.starter import STARTER
    from ragtune.train.common import run_dir
    from ragtune.train.dpo import default_data_path as dpo_data
    from ragtune.train.retriever.lsr import cache_path
    from ragtune.train.sft import default_data_path as sft_data

    ws = Workspace(tmp_path)
    assert sft_data(tmp_path) == ws.raft_path  # train sft reads what synth raft / from-qa write
    assert dpo_data(tmp_path) == ws.preferences_path  # train dpo reads what synth preferences writes
    assert run_dir(tmp_path, "x") == ws.train_dir("x")
    assert cache_path(ws, "org/model").parent == ws.lsr_cache_dir
    assert compare_run_dir(ws, "tuned", "hotpotqa", "eval", 20).parent == ws.compare_dir("")
    config = tmp_path / "ragtune.yaml"
    config.write_text(STARTER, encoding="utf-8")
    cfg = load_config(config)
    assert cfg.train is not None
    assert adapter_dir(cfg) == Workspace(cfg.workspace_dir).train_dir(cfg.train.name) / "adapter"
    assert adapter_dir(cfg).parent.parent == cfg.workspace_dir / "train"
