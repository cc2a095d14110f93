"""Supervised fine-tuning of the generator on RAFT or RA-DIT data, through TRL's SFTTrainer and PEFT.

ragtune's part is the data (the student prompt the evaluator uses too; loss on the answer only), the run (LoRA, QLoRA
or full; bf16 autocast where the CPU has it; length-grouped batches or packing; checkpoints and `--resume`) and the
record of what it cost (tokens/s, peak memory). The optimisation loop is TRL's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.hashing import file_hash
from ragtune.train import data as train_data
from ragtune.train.common import (
    TrainResult,
    build_trainer,
    is_main_process,
    load_model_for_training,
    lora_config,
    micro_batch,
    pick_device,
    prepare_run,
    run_dir,
    stderr_log,
    train_and_finish,
    trainer_arguments,
)
from ragtune.train.config import SFTRunConfig, TrainConfigError
from ragtune.workspace import Workspace


def default_data_path(workspace: str | Path) -> Path:
    return Workspace(workspace).raft_path


def build_rows(workspace: str | Path, data_path: Path, config: SFTRunConfig) -> list[dict[str, Any]]:
    """The training rows for the configured data mode, mixed with instruction data when asked."""
    examples = train_data.load_raft(data_path, split=config.split, limit=config.limit)
    if config.data_mode == "radit":
        from ragtune.retrieve.search import Searcher

        searcher = Searcher(workspace)

        def retrieve(question: str, k: int):
            return searcher.search(question, k=k, mode=config.retrieval_mode)

        rows = train_data.radit_rows(examples, retrieve, config.top_k)
    else:
        system = config.system_prompt if config.system_prompt is not None else train_data.STUDENT_SYSTEM
        rows = train_data.raft_rows(examples, system or None)
    if config.mix_ratio > 0 and config.mix_path:
        rows = train_data.mix(rows, train_data.read_instruction_rows(config.mix_path), config.mix_ratio, config.seed)
    return rows


def drop_too_long(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Rows whose prompt + answer exceed `max_length` tokens are left out (truncating would cut the answer the loss
    is on, or the documents it quotes); the caller reports how many."""
    kept = []
    for row in rows:
        text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_length:
            kept.append(row)
    return kept, len(rows) - len(kept)


@dataclass
class PreparedSFT:
    """A ready SFTTrainer and what went into it (the tests read the tokenised rows to check the loss mask)."""

    trainer: Any
    progress: Any
    examples: int
    base_path: str


def build_sft_trainer(
    workspace: str | Path,
    model: str | None,
    data_path: Path,
    config: SFTRunConfig,
    folder: Path,
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
) -> PreparedSFT:
    """The TRL SFTTrainer for a run: rows in the prompt-completion format (so TRL masks the prompt out of the loss),
    the LoRA config, ragtune's progress bar."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ragtune.train.fast_loss import install_answer_only_head, sft_trainer_class

    say = say or stderr_log
    rows = build_rows(workspace, data_path, config)
    net, tokenizer, base_path = load_model_for_training(model, config)
    rows, dropped = drop_too_long(rows, tokenizer, config.max_length)
    if dropped and is_main_process():
        say(f"note: {dropped} examples longer than --max-length {config.max_length} tokens were left out")
    if not rows:
        raise TrainConfigError(f"no example fits in --max-length {config.max_length}; raise it")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    args = SFTConfig(
        **trainer_arguments(config, folder / "checkpoints"),
        packing=config.packing,
        # grouping by length only saves padding, which a one-row micro-batch does not have
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.packing
        and micro_batch(config) > 1 else "random",
        completion_only_loss=True,
    )
    # On a CPU, TRL's fused LM head scores every position (prompt included) against the 49k-word vocabulary; the
    # answer-only head scores just the answer tokens: same loss, ~1.5x the tokens/s (see ragtune.train.fast_loss).
    answer_only = config.answer_only_head and pick_device(config.device) == "cpu"
    trainer_class = sft_trainer_class() if answer_only else SFTTrainer
    trainer, progress = build_trainer(trainer_class, f"sft {config.method}", config, folder, quiet, model=net,
                                      args=args, dataset=dataset, tokenizer=tokenizer,
                                      peft_config=lora_config(config, net))
    if answer_only:
        install_answer_only_head(trainer.model)
    return PreparedSFT(trainer, progress, len(rows), base_path)


def train_sft(
    workspace: str | Path,
    model: str | None = None,
    data_path: str | Path | None = None,
    config: SFTRunConfig | None = None,
    name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fine-tune `model` (default: the bundled SmolLM2) on the workspace's RAFT data; returns where the adapter or
    model went and what the run cost. Rerun with `resume=True` after an interruption to continue from the last
    checkpoint."""
    config = config or SFTRunConfig()
    say = log or stderr_log
    data_path = Path(data_path) if data_path else default_data_path(workspace)
    name = name or f"sft-{config.data_mode}-{config.method}"
    folder = run_dir(workspace, name)
    resume_from = prepare_run(folder, resume, overwrite)
    prepared = build_sft_trainer(workspace, model, data_path, config, folder, quiet, say)
    trainer = prepared.trainer
    if is_main_process() and not quiet:
        params: list[Any] = list(trainer.model.parameters()) if trainer.model is not None else []
        trainable = sum(int(p.numel()) for p in params if p.requires_grad)
        total = sum(int(p.numel()) for p in params)
        say(
            f"training {prepared.examples} examples ({config.data_mode}, {config.method}; {trainable:,} of {total:,} "
            f"parameters trainable; bf16 autocast {'on' if trainer.args.bf16 else 'off'})"
            + (f", resuming from {resume_from.name}" if resume_from else "")
        )
    inputs = {str(data_path.resolve()): file_hash(data_path)}
    if config.mix_path:
        inputs[str(Path(config.mix_path).resolve())] = file_hash(Path(config.mix_path))
    return train_and_finish(
        "sft", workspace, folder, trainer, config, model or prepared.base_path, prepared.examples, prepared.progress,
        inputs, resume_from,
    )
