"""`ragtune train sft | dpo | dap`: the generator trainers at the terminal.

Each command parses options into a `...RunConfig`, calls the trainer, and prints where the adapter (or model) went
and what the run cost. Works the same under `accelerate launch -m ragtune train sft ...` (only rank 0 prints).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from ragtune.cli.common import console, out
from ragtune.cli.common import fail as _fail
from ragtune.cli.common import settings_from_options as _settings
from ragtune.cli.options import WorkspaceOption, json_option

ModelOption = typer.Option(
    None, "--model", "-m", help="Base generator: bundled name, local folder, .gguf file or hub id. Default: the "
    "bundled SmolLM2-135M-Instruct.",
)
MethodOption = typer.Option("lora", "--method", help="lora | qlora (4-bit base; CUDA + bitsandbytes) | full")
# Options that mean the same in every generator trainer, declared once.
LoraROption = typer.Option(16, "--lora-r", help="LoRA rank.")
EpochsOption = typer.Option(1.0, "--epochs", help="Passes over the data.")
MaxStepsOption = typer.Option(-1, "--max-steps", help="Train exactly N optimiser steps (overrides --epochs): the "
                              "same schedule and adapter whatever else the machine is doing.")
MaxMinutesOption = typer.Option(
    None, "--max-minutes", help="Time budget: the first 3 steps are timed and the schedule is set to the step count "
    "that fits (warm-up and decay complete; never more than --epochs / --max-steps plan). For the same adapter on "
    "any machine, give --max-steps instead.",
)
Bf16Option = typer.Option("auto", "--bf16", help="auto (on for CUDA and CPUs with AVX512-BF16/AMX) | on | off")
SaveStepsOption = typer.Option(50, "--save-steps", help="Checkpoint every N steps (kept: the last 2).")
SeedOption = typer.Option(0, "--seed", help="Seed for data order and initialisation.")
MergeOption = typer.Option(False, "--merge", help="Write a merged model folder instead of an adapter.")
ResumeOption = typer.Option(False, "--resume", help="Continue from the run's last checkpoint (after a kill).")
OverwriteOption = typer.Option(False, "--overwrite", help="Discard the run's earlier checkpoints and start again.")
JsonOption = json_option("Print the run summary as JSON.")


def _lora(r: int, alpha: int | None, dropout: float, target_modules: str, layers: str = "all") -> dict[str, Any]:
    return {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": target_modules, "layers": layers}


def _run(fn, *args: Any, **kwargs: Any):
    """Run a trainer; a mistake the user can fix becomes one line and exit code 2, Ctrl-C a note on resuming."""
    from ragtune.models import ModelNotFoundError
    from ragtune.train.common import is_main_process
    from ragtune.train.config import TrainConfigError

    try:
        return fn(*args, **kwargs)
    except (TrainConfigError, ModelNotFoundError, FileNotFoundError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        if is_main_process():
            console.print("[yellow]interrupted[/]: saved checkpoints are kept; rerun the same command with --resume "
                          "to continue from the last one.")
        raise typer.Exit(130) from None


def _report(result: Any, as_json: bool) -> None:
    from ragtune.train.common import is_main_process

    if not is_main_process():
        return
    if as_json:
        data = result.to_dict()
        data.pop("history", None)
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "–"
    out.print(
        f"[green]trained[/] {result.trainer}: {result.examples} examples, {result.steps} steps, loss {loss}, "
        f"{result.tokens:,} tokens in {result.seconds:.0f}s ({result.tokens_per_second:.0f} tokens/s), peak memory "
        f"{result.peak_memory_mb:.0f} MB"
    )
    flag = "--adapter" if result.output_kind == "adapter" else "--model"
    out.print(f"{result.output_kind}: [cyan]{result.output}[/]  (use it with `ragtune eval {flag} {result.output}`)")


def sft_command(
    workspace: Path = WorkspaceOption,
    model: str = ModelOption,
    data: Path = typer.Option(
        None, "--data", help="RAFT file from `ragtune synth` (default WORKSPACE/synth/raft.jsonl)."
    ),
    method: str = MethodOption,
    data_mode: str = typer.Option(
        "raft", "--data-mode", help="raft: documents + question -> quoted chain-of-thought answer. radit: RA-DIT "
        "LM-ft, one 'Background:' row per retrieved chunk (top-k from the workspace index) -> the short answer.",
    ),
    top_k: int = typer.Option(3, "--top-k", help="radit: retrieved chunks per question (one row each)."),
    mix_data: Path = typer.Option(
        None, "--mix-data", help="Instruction JSONL to mix in (messages or prompt/completion)."
    ),
    mix_ratio: float = typer.Option(0.0, "--mix-ratio", help="Share of instruction rows in the final data (0..1)."),
    lora_r: int = LoraROption,
    lora_alpha: int = typer.Option(None, "--lora-alpha", help="LoRA alpha (default 2 x rank)."),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout"),
    target_modules: str = typer.Option("all-linear", "--target-modules", help="all-linear, or e.g. q_proj,v_proj."),
    lora_layers: str = typer.Option(
        "all", "--lora-layers", help="Decoder layers that get adapters: all, top:N (the last N) or A-B (0-based). "
        "The backward pass stops at the lowest adapted layer: top:15 of SmolLM2's 30 is ~1.5x faster on a CPU.",
    ),
    epochs: float = EpochsOption,
    max_steps: int = MaxStepsOption,
    max_minutes: float = MaxMinutesOption,
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 2e-4 for LoRA / QLoRA, 2e-5 for full)."),
    batch_size: int = typer.Option(4, "--batch-size"),
    grad_accum: int = typer.Option(2, "--grad-accum", help="Gradient accumulation steps."),
    micro_batch: int = typer.Option(None, "--micro-batch", help="Rows per forward pass (default: 1 on a CPU, where "
                                    "unpadded single rows are 2.6x faster; --batch-size on a GPU). The step still "
                                    "averages --batch-size x --grad-accum rows."),
    max_length: int = typer.Option(1536, "--max-length", help="Longer examples are left out (and counted)."),
    packing: bool = typer.Option(False, "--packing/--no-packing", help="Pack examples into --max-length rows "
                                 "(padding-free) instead of length-grouped padded batches."),
    bf16: str = Bf16Option,
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Recompute activations in the backward pass: less memory, ~30% slower."
    ),
    save_steps: int = SaveStepsOption,
    split: str = typer.Option("train", "--split", help="Hash split of the data to train on: train | all."),
    limit: int = typer.Option(None, "--limit", help="Train on the first N examples."),
    seed: int = SeedOption,
    merge: bool = MergeOption,
    name: str = typer.Option(None, "--name", help="Run folder under WORKSPACE/train/ (default sft-<mode>-<method>)."),
    resume: bool = ResumeOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Fine-tune the generator on RAFT data (or RA-DIT LM-ft data): LoRA, QLoRA or full, loss on the answer only.

    Checkpoints go to WORKSPACE/train/NAME/checkpoints every --save-steps; after a crash or Ctrl-C, rerun with
    --resume. The adapter lands in WORKSPACE/train/NAME/adapter (or model/ with --merge or --method full).
    """
    from ragtune.train.config import SFTRunConfig
    from ragtune.train.sft import train_sft

    config = _settings(
        SFTRunConfig, method=method, lora=_lora(lora_r, lora_alpha, lora_dropout, target_modules, lora_layers),
        epochs=epochs,
        max_steps=max_steps, max_minutes=max_minutes, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
        micro_batch=micro_batch, max_length=max_length,
        bf16=bf16, save_steps=save_steps, seed=seed, merge=merge, data_mode=data_mode, packing=packing,
        gradient_checkpointing=gradient_checkpointing,
        split=split, limit=limit, top_k=top_k, mix_path=str(mix_data) if mix_data else None, mix_ratio=mix_ratio,
    )
    result = _run(train_sft, workspace, model, data, config, name=name, resume=resume, overwrite=overwrite,
                  log=lambda m: console.print(m))
    _report(result, as_json)


def dpo_command(
    workspace: Path = WorkspaceOption,
    model: str = ModelOption,
    adapter: Path = typer.Option(None, "--adapter", help="An SFT adapter to continue (the reference is its frozen "
                                 "copy)."),
    data: Path = typer.Option(None, "--data", help="Preferences from `ragtune synth preferences` (default WORKSPACE/"
                              "synth/preferences.jsonl), or JSONL of {prompt, chosen, rejected}."),
    beta: float = typer.Option(0.1, "--beta", help="DPO temperature: higher keeps closer to the reference."),
    method: str = MethodOption,
    lora_r: int = LoraROption,
    epochs: float = EpochsOption,
    max_steps: int = MaxStepsOption,
    max_minutes: float = MaxMinutesOption,
    lr: float = typer.Option(5e-6, "--lr", help="Learning rate (DPO wants a small one)."),
    batch_size: int = typer.Option(2, "--batch-size", help="Preference pairs per device step."),
    grad_accum: int = typer.Option(4, "--grad-accum", help="Gradient accumulation steps."),
    max_length: int = typer.Option(1536, "--max-length", help="Prompt + answer tokens kept."),
    bf16: str = Bf16Option,
    save_steps: int = SaveStepsOption,
    seed: int = SeedOption,
    name: str = typer.Option(None, "--name", help="Run folder under WORKSPACE/train/ (default dpo)."),
    resume: bool = ResumeOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Direct preference optimisation (TRL's DPOTrainer) on chosen / rejected answer pairs."""
    from ragtune.train.config import DPORunConfig
    from ragtune.train.dpo import train_dpo

    config = _settings(
        DPORunConfig, method=method, lora=_lora(lora_r, None, 0.05, "all-linear"),
        epochs=epochs, max_steps=max_steps,
        max_minutes=max_minutes, lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
        bf16=bf16, save_steps=save_steps,
        seed=seed, beta=beta, adapter=str(adapter) if adapter else None,
    )
    result = _run(train_dpo, workspace, model, data, config, name=name, resume=resume, overwrite=overwrite,
                  log=lambda m: console.print(m))
    _report(result, as_json)


def dap_command(
    workspace: Path = WorkspaceOption,
    model: str = ModelOption,
    method: str = MethodOption,
    lora_r: int = LoraROption,
    epochs: float = EpochsOption,
    max_steps: int = MaxStepsOption,
    max_minutes: float = MaxMinutesOption,
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 2e-4 for LoRA, 2e-5 for full)."),
    batch_size: int = typer.Option(4, "--batch-size"),
    grad_accum: int = typer.Option(2, "--grad-accum"),
    max_length: int = typer.Option(512, "--max-length", help="Packed row length in tokens."),
    bf16: str = Bf16Option,
    save_steps: int = SaveStepsOption,
    limit: int = typer.Option(None, "--limit", help="Use the first N chunks (by chunk id)."),
    seed: int = SeedOption,
    merge: bool = MergeOption,
    name: str = typer.Option(None, "--name", help="Run folder under WORKSPACE/train/ (default dap-<method>)."),
    resume: bool = ResumeOption,
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
) -> None:
    """Domain-adaptive pre-training: continue next-token training on the indexed chunks."""
    from ragtune.train.config import DAPRunConfig
    from ragtune.train.dap import train_dap

    config = _settings(
        DAPRunConfig, method=method, lora=_lora(lora_r, None, 0.05, "all-linear"),
        epochs=epochs, max_steps=max_steps,
        max_minutes=max_minutes, lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
        bf16=bf16, save_steps=save_steps,
        seed=seed, merge=merge, limit=limit,
    )
    result = _run(train_dap, workspace, model, config, name=name, resume=resume, overwrite=overwrite,
                  log=lambda m: console.print(m))
    _report(result, as_json)


def register(train_app: typer.Typer) -> None:
    train_app.command("sft")(sft_command)
    train_app.command("dpo")(dpo_command)
    train_app.command("dap")(dap_command)
