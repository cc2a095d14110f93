"""DPO on preference pairs, through TRL's DPOTrainer.

With `--adapter` (an SFT adapter), DPO keeps training that same adapter and the reference model is a frozen copy of
base + adapter, so the result is still one adapter over the base model; without it, a fresh LoRA adapter is trained
and the reference is the base itself (the adapter switched off).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ragtune.hashing import file_hash
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
from ragtune.train.config import DPORunConfig, TrainConfigError
from ragtune.workspace import Workspace


def default_data_path(workspace: str | Path) -> Path:
    return Workspace(workspace).preferences_path


def train_dpo(
    workspace: str | Path,
    model: str | None = None,
    data_path: str | Path | None = None,
    config: DPORunConfig | None = None,
    name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Prefer the chosen answers over the rejected ones; returns where the adapter went and what the run cost."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    config = config or DPORunConfig()
    say = log or stderr_log
    data_path = Path(data_path) if data_path else default_data_path(workspace)
    rows = train_data.load_preferences(data_path)
    name = name or "dpo"
    folder = run_dir(workspace, name)
    resume_from = prepare_run(folder, resume, overwrite)

    net, tokenizer, base_path = load_model_for_training(model, config)
    ref_model = None
    peft_config = lora_config(config, net)
    if config.adapter:
        if config.method == "full":
            raise TrainConfigError("--adapter continues a LoRA adapter; it cannot be combined with --method full")
        from peft import PeftModel

        if not (Path(config.adapter) / "adapter_config.json").exists():
            raise TrainConfigError(f"{config.adapter} is not a LoRA adapter folder (no adapter_config.json)")
        reference, _, _ = load_model_for_training(model, config)
        ref_model = PeftModel.from_pretrained(reference, config.adapter).merge_and_unload().eval()
        net = PeftModel.from_pretrained(net, config.adapter, is_trainable=True)
        peft_config = None  # the model already carries the adapter being trained
    args = DPOConfig(**trainer_arguments(config, folder / "checkpoints"), beta=config.beta)
    trainer, progress = build_trainer(DPOTrainer, "dpo", config, folder, quiet, model=net, args=args,
                                      dataset=Dataset.from_list(rows), tokenizer=tokenizer, peft_config=peft_config,
                                      ref_model=ref_model)
    if is_main_process() and not quiet:
        say(f"DPO on {len(rows)} preference pairs (beta {config.beta}"
            + (f", continuing {config.adapter}" if config.adapter else "") + ")")
    return train_and_finish(
        "dpo", workspace, folder, trainer, config, model or base_path, len(rows), progress,
        {str(data_path.resolve()): file_hash(data_path)}, resume_from,
    )
