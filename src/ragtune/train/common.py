"""What every generator trainer shares: loading a model to train, LoRA, TRL arguments, progress, checkpoints, output.

The trainers themselves are TRL's (`SFTTrainer`, `DPOTrainer`); this module only decides what TRL is given, so a run
on a laptop CPU, a single GPU or `accelerate launch` over several processes takes the same path.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.llm.hardware import cpu_has_fast_bf16  # one detection for training and inference
from ragtune.train.config import RunSettings, TrainConfigError
from ragtune.workspace import Manifest, Workspace, write_json_atomic

CHECKPOINTS = "checkpoints"
LOSS_CURVE = "loss_curve.json"


# ---- hardware --------------------------------------------------------------------------------------------------------


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def use_bf16(setting: str, device: str) -> bool:
    if setting == "on":
        return True
    if setting == "off":
        return False
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_fast_bf16()


def is_main_process() -> bool:
    """True in a plain run and in rank 0 of `accelerate launch` / torchrun (only it prints and writes outputs)."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


# ---- models ----------------------------------------------------------------------------------------------------------


def check_qlora(device: str) -> None:
    """QLoRA needs 4-bit kernels, which bitsandbytes provides on CUDA only: say so before loading anything."""
    if not device.startswith("cuda"):
        raise TrainConfigError(
            "QLoRA trains a 4-bit quantised model, which needs a CUDA GPU and bitsandbytes; this machine has no GPU. "
            "Use --method lora (same adapter, full-precision base) or --method full."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise TrainConfigError("QLoRA needs bitsandbytes: `pip install bitsandbytes`, or use --method lora") from exc


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model_for_training(model_ref: str | None, settings: RunSettings) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved path). Weights load in fp32 (master weights); bf16 comes from autocast. QLoRA
    loads the base in 4-bit NF4 with bf16 compute, as in Dettmers et al. 2023."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragtune.models import quiet_transformers, resolve_generator

    quiet_transformers()
    if model_ref and model_ref.startswith("openai:"):
        raise TrainConfigError("an openai: model is served elsewhere and cannot be trained here; pass a local model")
    device = pick_device(settings.device)
    path = resolve_generator(model_ref).path
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if settings.method == "qlora":
        check_qlora(device)
        from transformers import BitsAndBytesConfig

        kwargs = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            ),
            "dtype": torch.bfloat16,
        }
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if settings.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    # Seed here, not only in the Trainer: TRL draws the LoRA initialisation before the Trainer seeds anything, so
    # without this two runs with the same --seed would start from different adapters.
    from transformers import set_seed

    set_seed(settings.seed)
    return model, load_tokenizer(path), path


def lora_config(settings: RunSettings, model: Any = None):
    """PEFT's LoraConfig from ragtune's settings; None for full fine-tuning. `model` is needed only when
    `--lora-layers` picks layers (to count them and to name the linear modules "all-linear" stands for)."""
    if settings.method == "full":
        return None
    from peft import LoraConfig

    from ragtune.train.config import parse_layers

    lora = settings.lora
    targets = lora.modules()
    layers = None
    if lora.layers.strip().lower() != "all":
        if model is None:
            raise TrainConfigError("--lora-layers needs the model to count its layers")
        layers = parse_layers(lora.layers, int(model.config.num_hidden_layers))
        if targets == "all-linear":
            targets = decoder_linear_names(model)  # PEFT takes layers_to_transform only with named modules
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha or 2 * lora.r,
        lora_dropout=lora.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def decoder_linear_names(model: Any) -> list[str]:
    """The short names of every linear layer inside the decoder blocks (q_proj, ..., down_proj): what PEFT's
    "all-linear" adapts, spelled out."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}"}
    if not names:
        raise TrainConfigError("--lora-layers: no linear layers found inside the model's decoder layers")
    return sorted(names)


# ---- TRL arguments ---------------------------------------------------------------------------------------------------


def micro_batch(settings: RunSettings) -> int:
    """Rows per forward pass. On a CPU one row: a padded pair makes SDPA build an explicit mask and take its slow
    path (attention weights kept for the backward, 1.2 GB at 768 tokens), while a single unpadded row runs the flash
    kernel; the optimiser step is the same, accumulated over the rows."""
    if settings.micro_batch is not None:
        return settings.micro_batch
    return 1 if pick_device(settings.device) == "cpu" else settings.batch_size


def trainer_arguments(settings: RunSettings, output_dir: Path) -> dict[str, Any]:
    """Keyword arguments shared by TRL's SFTConfig and DPOConfig."""
    device = pick_device(settings.device)
    bf16 = use_bf16(settings.bf16, device)
    micro = micro_batch(settings)
    return {
        # TRL turns activation checkpointing on by default, which recomputes every forward pass in the backward one;
        # ragtune keeps it off unless asked (--gradient-checkpointing), trading memory for speed.
        "gradient_checkpointing": settings.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"every_n_layers": settings.checkpoint_every}
        if settings.gradient_checkpointing and settings.checkpoint_every > 1 else None,
        "output_dir": str(output_dir),
        "num_train_epochs": settings.epochs if settings.epochs > 0 else 1.0,
        "max_steps": settings.max_steps,
        "learning_rate": settings.learning_rate,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": settings.grad_accum * settings.batch_size // micro,
        # A float in [0, 1) is a ratio of the total steps, rounded up by transformers: a 1-step run would then spend its
        # only step at learning rate 0. With a known step count, round down instead.
        "warmup_steps": int(settings.warmup_ratio * settings.max_steps) if settings.max_steps > 0
        else settings.warmup_ratio,
        "lr_scheduler_type": "cosine",
        "weight_decay": settings.weight_decay,
        "bf16": bf16,
        "use_cpu": device == "cpu",
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "save_total_limit": settings.save_total_limit,
        "logging_steps": settings.logging_steps,
        "seed": settings.seed,
        "data_seed": settings.seed,
        "report_to": "none",
        "disable_tqdm": True,  # ragtune draws its own bar, with loss and tokens/s
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "max_length": settings.max_length,
    }


# ---- progress --------------------------------------------------------------------------------------------------------


def progress_callback(
    label: str,
    quiet: bool = False,
    max_minutes: float | None = None,
    folder: Path | None = None,
    warmup_ratio: float = 0.0,
):
    """A TrainerCallback that reports progress (step, loss, tokens/s, ETA: a rich bar on a TTY, plain lines every
    ~10 s or 5% elsewhere, also appended to the run's `train.log`), keeps the per-step loss curve, and turns a
    `max_minutes` budget into a fixed step count after timing the first steps (`ragtune.train.budget`)."""
    from transformers import TrainerCallback

    from ragtune.llm.cpu_share import ThreadGovernor
    from ragtune.progress import Reporter
    from ragtune.train import budget as budget_mod

    class TrainProgress(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []
            self.reporter: Reporter | None = None
            self.started = 0.0
            self.start_tokens = 0
            self.start_step = 0
            self.last_loss: float | None = None
            self.budget: budget_mod.BudgetDecision | None = None
            self.step_seconds: list[float] = []
            self._step_started = 0.0
            self._warmup = 0
            # on a CPU, torch's thread count follows the machine's load (one busy core: 1.8x faster with 1 thread)
            self.governor = ThreadGovernor(on_change=self.say) if pick_device() == "cpu" else None

        def say(self, message: str) -> None:
            if self.reporter is not None:
                self.reporter.note(f"{label}: {message}")

        def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            self.started = self._step_started = time.perf_counter()
            self.start_tokens = state.num_input_tokens_seen
            self.start_step = state.global_step
            if state.is_world_process_zero:
                log_file = folder / "train.log" if folder is not None else None
                self.reporter = Reporter(label, total=state.max_steps, unit="steps", enabled=not quiet,
                                         log_file=log_file)
                self.reporter.update(state.global_step)
                self.reporter.restart_clock()
            if max_minutes is None or optimizer is None or lr_scheduler is None:
                return
            saved = budget_mod.load_decision(folder) if folder is not None and state.global_step > 0 else None
            if saved is not None:  # a resumed run keeps the step count its first part decided
                self.budget = saved
                self._apply(state, optimizer, lr_scheduler, saved.warmup_steps, saved.steps)
                self.say(f"resuming with the budgeted schedule of {saved.steps} steps ({saved.message})")
                return
            # lengthen the warm-up to cover the timed steps, so the schedule changes before any decay
            self._warmup = budget_mod.budget_warmup(warmup_ratio, state.max_steps)
            budget_mod.reschedule(lr_scheduler, optimizer, self._warmup, state.max_steps)

        def _apply(self, state, optimizer, lr_scheduler, warmup: int, total: int) -> None:
            budget_mod.reschedule(lr_scheduler, optimizer, warmup, total)
            state.max_steps = total  # transformers' flow callback stops the run there, and saves
            if self.reporter is not None:
                self.reporter.update(total=total)

        def tokens_per_second(self, state) -> float:
            elapsed = time.perf_counter() - self.started
            return (state.num_input_tokens_seen - self.start_tokens) / elapsed if elapsed > 0 else 0.0

        def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            now = time.perf_counter()
            self.step_seconds.append(now - self._step_started)
            self._step_started = now
            if (max_minutes is not None and self.budget is None and optimizer is not None
                    and state.global_step - self.start_step == min(budget_mod.TIMED_STEPS, state.max_steps)):
                decision = budget_mod.decide(max_minutes, state.max_steps, self.step_seconds, now - self.started,
                                             self._warmup)
                # every rank takes rank 0's decision under `accelerate launch`, so all stop at the same step
                decision.steps = broadcast_int(decision.steps)
                # a shorter run gets the warm-up its own length calls for (never longer than the planned one)
                decision.warmup_steps = min(self._warmup, budget_mod.budget_warmup(warmup_ratio, decision.steps))
                self.budget = decision
                if decision.steps != state.max_steps:
                    self._apply(state, optimizer, lr_scheduler, decision.warmup_steps, decision.steps)
                if state.global_step >= decision.steps:  # transformers' flow callback already ran for this step
                    control.should_training_stop = True
                self.say(decision.message)
                if folder is not None and state.is_world_process_zero:
                    budget_mod.save_decision(folder, decision)
            if self.governor is not None:
                self.governor.tick()
            if self.reporter is not None:
                self.reporter.update(state.global_step, tokens_per_second=round(self.tokens_per_second(state)))

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.last_loss = float(logs["loss"])
                entry = {"step": state.global_step, "loss": self.last_loss,
                         "tokens_per_second": round(self.tokens_per_second(state), 1)}
                if "learning_rate" in logs:
                    entry["learning_rate"] = float(logs["learning_rate"])
                self.history.append(entry)
                if self.reporter is not None:
                    self.reporter.update(loss=round(self.last_loss, 4))

        def on_train_end(self, args, state, control, **kwargs):
            if self.reporter is not None:
                self.reporter.update(state.global_step)
                self.reporter.close()

    return TrainProgress()


def loss_history(state: Any, seen: list[dict[str, float]]) -> list[dict[str, float]]:
    """One entry per logged step of the whole run. A resumed run's callback saw only the steps after the checkpoint;
    the Trainer's `log_history` (restored from the checkpoint) holds the ones before, so the curve of a run killed
    and resumed equals the curve of an uninterrupted one. This process's entries win where both have a step."""
    by_step: dict[int, dict[str, float]] = {}
    for logged in getattr(state, "log_history", None) or []:
        if "loss" in logged and "step" in logged:
            step = int(logged["step"])
            entry = {"step": float(step), "loss": float(logged["loss"])}
            if "learning_rate" in logged:
                entry["learning_rate"] = float(logged["learning_rate"])
            by_step[step] = entry
    for entry in seen:
        by_step[int(entry["step"])] = {**by_step.get(int(entry["step"]), {}), **entry}
    return [by_step[step] for step in sorted(by_step)]


def broadcast_int(value: int) -> int:
    """Rank 0's value on every rank under torch.distributed; the value itself in a plain run."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.long)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def quiet_trainer(trainer: Any) -> Any:
    """Drop transformers' PrinterCallback: with tqdm off it prints every log dict to stdout, which would break
    `--json` output; ragtune's bar shows the same numbers on stderr."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


# ---- runs, checkpoints, outputs --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run produced and what it cost; also written as `train_summary.json` in the run folder."""

    trainer: str
    run_dir: str
    output: str  # the adapter folder, or the merged / fully trained model folder
    output_kind: str  # "adapter" | "model"
    base_model: str
    examples: int
    steps: int
    train_loss: float | None
    tokens: int
    seconds: float
    tokens_per_second: float
    peak_memory_mb: float
    resumed_from: str | None = None
    world_size: int = 1  # processes under `accelerate launch` / torchrun
    distributed_backend: str | None = None  # gloo on CPUs, nccl on GPUs
    history: list[dict[str, float]] = field(default_factory=list)  # the loss curve, one entry per logged step
    budget: dict[str, Any] | None = None  # how --max-minutes became a step count (`ragtune.train.budget`)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_trainer(trainer_class: Any, label: str, settings: RunSettings, folder: Path, quiet: bool, *, model: Any,
                  args: Any, dataset: Any, tokenizer: Any, peft_config: Any, **extra: Any) -> tuple[Any, Any]:
    """(trainer, progress): a TRL trainer over `dataset` with ragtune's progress bar as its one callback and
    transformers' stdout printer removed; the one way SFT, DPO and DAP build theirs (`extra`: e.g. DPO's ref_model)."""
    progress = progress_callback(label, quiet=quiet, max_minutes=settings.max_minutes, folder=folder,
                                 warmup_ratio=settings.warmup_ratio)
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=peft_config, callbacks=[progress], **extra)
    quiet_trainer(trainer)
    return trainer, progress


def run_dir(workspace: str | os.PathLike[str], name: str) -> Path:
    return Workspace(workspace).train_dir(name)


def checkpoint_complete(path: Path) -> bool:
    """Whether a checkpoint was written to the end. The Trainer writes trainer_state.json last, so a run killed while
    saving leaves a folder without it (or with half of it); resuming from that folder would fail."""
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def checkpoints(folder: Path, complete_only: bool = True) -> list[Path]:
    """Saved checkpoints, oldest first (the Trainer names them checkpoint-<step>)."""
    found = [p for p in (folder / CHECKPOINTS).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    if complete_only:
        found = [p for p in found if checkpoint_complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def prepare_run(folder: Path, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (or None). Refuses to silently restart over a run that was interrupted."""
    found = checkpoints(folder)
    if resume and is_main_process():
        for partial in set(checkpoints(folder, complete_only=False)) - set(found):
            print(f"note: {partial.name} was interrupted while being saved; removing it", file=sys.stderr)
            shutil.rmtree(partial, ignore_errors=True)
    if resume:
        if not found:
            if is_main_process():
                print(f"note: no checkpoint in {folder / CHECKPOINTS}; starting from the beginning", file=sys.stderr)
            return None
        return found[-1]
    if found and not overwrite:
        raise TrainConfigError(
            f"{folder} holds checkpoints of an earlier run (last: {found[-1].name}). Pass --resume to continue it, "
            "--overwrite to start again, or --name for a new run."
        )
    if overwrite and folder.exists() and is_main_process():
        shutil.rmtree(folder)
    return None


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the peak resident set size."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def distributed_backend() -> str | None:
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


def save_output(model: Any, tokenizer: Any, folder: Path, settings: RunSettings) -> tuple[Path, str]:
    """Write the adapter (`adapter/`) or a full model folder (`model/`, merged when --merge). The tokenizer goes
    beside it, so `ragtune eval --adapter` and `--model` load the exact template the model was trained with."""
    is_peft = hasattr(model, "peft_config")
    if is_peft and not settings.merge:
        out = folder / "adapter"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out, "adapter"
    out = folder / "model"
    if is_peft:
        if settings.method == "qlora":
            raise TrainConfigError("--merge with QLoRA would merge into a 4-bit base; save the adapter instead")
        model = model.merge_and_unload()
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)  # a de-quantised GGUF base must not be saved as quantised
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, "model"


def stderr_log(message: str) -> None:
    """The default `log` of the train functions: one line on stderr, so stdout stays free for `--json`."""
    print(message, file=sys.stderr)


def train_and_finish(
    trainer_name: str,
    workspace: str | os.PathLike[str],
    folder: Path,
    trainer: Any,
    settings: RunSettings,
    base_model: str,
    examples: int,
    progress: Any,
    inputs: dict[str, str],
    resumed_from: Path | None,
) -> TrainResult:
    """The part every trainer shares after it is built: train (from the checkpoint when resuming), time it, then
    save the output, the summary and the manifest through `finish_run`."""
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
    seconds = time.perf_counter() - started
    return finish_run(
        trainer_name, workspace, folder, trainer, output, settings, base_model, examples, seconds, progress, inputs,
        resumed_from,
    )


def finish_run(
    trainer_name: str,
    workspace: str | os.PathLike[str],
    folder: Path,
    trainer: Any,
    train_output: Any,
    settings: RunSettings,
    base_model: str,
    examples: int,
    seconds: float,
    progress: Any,
    inputs: dict[str, str],
    resumed_from: Path | None,
) -> TrainResult:
    """Save the output, then the summary and the manifest (rank 0 only under `accelerate launch`)."""
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    device = pick_device(settings.device)
    state = trainer.state
    tokens = int(state.num_input_tokens_seen - (progress.start_tokens if progress else 0))
    trained_seconds = (time.perf_counter() - progress.started) if progress and progress.started else seconds
    output, kind = Path(folder), "none"
    if trainer.accelerator.is_main_process:
        output, kind = save_output(model, trainer.processing_class, folder, settings)
    trainer.accelerator.wait_for_everyone()
    result = TrainResult(
        trainer=trainer_name,
        run_dir=str(folder),
        output=str(output),
        output_kind=kind,
        base_model=base_model,
        examples=examples,
        steps=int(state.global_step),
        train_loss=float(train_output.training_loss) if train_output is not None else None,
        tokens=tokens,
        seconds=round(seconds, 2),
        tokens_per_second=round(tokens / trained_seconds, 1) if trained_seconds > 0 else 0.0,
        peak_memory_mb=round(peak_memory_mb(device), 1),
        resumed_from=str(resumed_from) if resumed_from else None,
        world_size=int(trainer.args.world_size),
        distributed_backend=distributed_backend(),
        history=loss_history(state, progress.history if progress else []),
        budget=progress.budget.to_dict() if progress and progress.budget else None,
        config=settings.model_dump(),
    )
    if trainer.accelerator.is_main_process:
        write_json_atomic(folder / "train_summary.json", result.to_dict())
        # the loss per step on its own, so two runs compare with one `diff` (same seed + same steps: same curve)
        write_json_atomic(folder / LOSS_CURVE, {"steps": result.steps, "loss": [h["loss"] for h in result.history],
                                                "history": result.history})
        manifest = Manifest(
            stage=f"train-{folder.name}",
            inputs=inputs,
            config=settings.model_dump(),
            counts={"examples": examples, "steps": result.steps, "tokens": tokens},
            timings={"train": seconds},
            extra={"output": str(output), "output_kind": kind, "base_model": base_model},
        )
        Workspace(workspace).write_manifest(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2, default=str), encoding="utf-8")
    return result
