"""Domain-adaptive pre-training (DAP): next-token loss on the workspace's own chunks, before task tuning.

The corpus is the index ingest built, so DAP sees exactly the text retrieval will serve. Rows are packed into
`max_length`-token sequences (no padding wasted), and LoRA is the default so the result composes with later SFT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune.train import data as train_data
from ragtune.train.common import (
    TrainResult,
    build_trainer,
    is_main_process,
    load_model_for_training,
    lora_config,
    prepare_run,
    run_dir,
    stderr_log,
    train_and_finish,
    trainer_arguments,
)
from ragtune.train.config import DAPRunConfig
from ragtune.workspace import Workspace


def packed_rows(trainer: Any) -> int:
    dataset = trainer.train_dataset
    return len(dataset) if hasattr(dataset, "__len__") else -1


def train_dap(
    workspace: str | Path,
    model: str | None = None,
    config: DAPRunConfig | None = None,
    name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Continue pre-training `model` on the indexed chunks; returns where the adapter or model went."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = config or DAPRunConfig()
    say = log or stderr_log
    rows = train_data.corpus_rows(workspace, config.limit)
    name = name or f"dap-{config.method}"
    folder = run_dir(workspace, name)
    resume_from = prepare_run(folder, resume, overwrite)
    net, tokenizer, base_path = load_model_for_training(model, config)
    # "wrapped" packing: a language-modelling corpus has no answer to protect, so rows may span chunk boundaries.
    args = SFTConfig(
        **trainer_arguments(config, folder / "checkpoints"),
        packing=config.packing,
        packing_strategy="wrapped",
        completion_only_loss=False,
    )
    trainer, progress = build_trainer(SFTTrainer, "dap", config, folder, quiet, model=net, args=args,
                                      dataset=Dataset.from_list(rows), tokenizer=tokenizer,
                                      peft_config=lora_config(config, net))
    if is_main_process() and not quiet:
        say(f"domain-adaptive pre-training on {len(rows)} chunks ({packed_rows(trainer)} packed rows)")
    index_manifest = Workspace(workspace).read_manifest("ingest") or {}
    inputs = {"index": str(index_manifest.get("finished", ""))}
    return train_and_finish(
        "dap", workspace, folder, trainer, config, model or base_path, len(rows), progress, inputs, resume_from,
    )
