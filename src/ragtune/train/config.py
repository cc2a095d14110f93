"""Settings of the generator trainers, one pydantic model per trainer in TRL's style (`SFTRunConfig`, `DPORunConfig`,
...), validated when built.

They hold what ragtune decides (method, LoRA shape, data mode, where checkpoints go); `ragtune.train.common` turns
them into TRL's own `SFTConfig` / `DPOConfig`. Every field has a default that runs offline on a laptop CPU. The same
models are the `train:` section of `ragtune run`'s YAML (`ragtune.run.config`), so a field added here is a key there
with the same default and check. Unknown fields are errors (a typo must not silently train with the default).

A bad value fails with a `pydantic.ValidationError` whose message names the command-line option that sets it
(`--lora-r must be >= 1, got 0`); the error's location names the field (`lora.r`) for a YAML reader.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from ragtune.config import StrictSettings as _Settings
from ragtune.config import one_of as _one_of
from ragtune.config import setting_error as _bad

METHODS = ("lora", "qlora", "full")
DATA_MODES = ("raft", "radit")
BF16_CHOICES = ("auto", "on", "off")
SPLITS = ("train", "eval", "all")


class TrainConfigError(ValueError):
    """A setting or an input the trainer cannot use; the message says how to fix it."""


def parse_layers(text: str, num_layers: int | None) -> list[int] | None:
    """The decoder-layer indices of `--lora-layers` ("all" -> None, "top:N", "A-B"). With `num_layers` None only the
    syntax is checked (the model is not loaded yet), and the list is None."""
    text = text.strip().lower()
    if text == "all":
        return None
    try:
        if text.startswith("top:"):
            count = int(text[4:])
            if count < 1:
                raise ValueError
            if num_layers is None:
                return None
            if count > num_layers:
                raise TrainConfigError(f"--lora-layers {text}: the model has only {num_layers} layers")
            return list(range(num_layers - count, num_layers))
        first, _, last = text.partition("-")
        low, high = int(first), int(last)
        if low < 0 or high < low:
            raise ValueError
    except ValueError:
        raise TrainConfigError(f"--lora-layers must be all, top:N or A-B (0-based, inclusive), got {text!r}") from None
    if num_layers is not None and high >= num_layers:
        raise TrainConfigError(f"--lora-layers {text}: the model's layers are 0-{num_layers - 1}")
    return None if num_layers is None else list(range(low, high + 1))


class LoraSettings(_Settings):
    """The LoRA adapter's shape. `alpha` defaults to 2 x rank (the common choice; scale = alpha / r = 2)."""

    r: int = Field(default=16, description="LoRA rank (`--lora-r`).")
    alpha: int | None = Field(default=None, description="LoRA alpha (`--lora-alpha`); None: 2 x rank.")
    dropout: float = Field(default=0.05, description="Dropout on the adapter's input, in [0, 1) (`--lora-dropout`).")
    target_modules: str = Field(default="all-linear", description="all-linear, or a comma-separated list such as "
                                "q_proj,v_proj (`--target-modules`).")
    # Backpropagation stops at the lowest adapted layer, so adapting the top half of SmolLM2's 30 layers makes a CPU
    # step ~1.5x faster.
    layers: str = Field(default="all", description="Decoder layers that carry adapters: all, top:N (the last N) or A-B "
                        "(0-based, inclusive) (`--lora-layers`).")

    @field_validator("r")
    @classmethod
    def _rank(cls, value: int) -> int:
        if value < 1:
            raise _bad(f"--lora-r must be >= 1, got {value}")
        return value

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise _bad(f"--lora-dropout must be in [0, 1), got {value}")
        return value

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: str) -> str:
        if not value.strip():
            raise _bad("--target-modules must name modules, or be all-linear")
        return value

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: str) -> str:
        try:
            parse_layers(value, None)
        except TrainConfigError as exc:
            raise _bad(str(exc)) from None
        return value

    def modules(self) -> str | list[str]:
        names = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        return "all-linear" if names == ["all-linear"] else names


class RunSettings(_Settings):
    """What every generator trainer shares: optimisation, precision, checkpoints, output."""

    method: str = Field(default="lora", description="lora | qlora (4-bit base; CUDA + bitsandbytes) | full "
                                                    "(`--method`).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="The LoRA adapter's shape.")
    epochs: float = Field(default=1.0, description="Passes over the data (`--epochs`).")
    max_steps: int = Field(default=-1, description="Train exactly N optimiser steps; > 0 overrides epochs "
                                                   "(`--max-steps`).")
    max_minutes: float | None = Field(default=None, description="A time budget: the first steps are timed and the "
                                                                "schedule is set to the step count that fits, never "
                                                                "cut short (`--max-minutes`).")
    lr: float | None = Field(default=None, description="Learning rate; None: 2e-4 for adapters, 2e-5 for full "
                                                       "fine-tuning (`--lr`).")
    batch_size: int = Field(default=4, description="Rows per optimiser step before accumulation (`--batch-size`).")
    grad_accum: int = Field(default=2, description="Gradient accumulation steps (`--grad-accum`).")
    # None: 1 on a CPU (no padding, and PyTorch's flash attention kernel instead of a materialised mask: 2.6x the
    # tokens/s at under half the memory of padded pairs), batch_size on a GPU. The optimiser step still sees
    # batch_size x grad_accum rows, with the loss averaged over all their answer tokens.
    micro_batch: int | None = Field(default=None, description="Rows per forward pass; must divide batch_size; None: 1 "
                                                              "on a CPU, batch_size on a GPU (`--micro-batch`).")
    max_length: int = Field(default=1024, description="Longest example in tokens; longer ones are left out and counted "
                            "(`--max-length`).")
    warmup_ratio: float = Field(default=0.03, description="Share of the steps spent warming the learning rate up.")
    weight_decay: float = Field(default=0.0, description="AdamW weight decay.")
    bf16: str = Field(default="auto", description="auto (autocast in bf16 where the hardware has fast bf16: CUDA, or "
                                                  "a CPU with AVX512-BF16 / AMX) | on | off (`--bf16`).")
    save_steps: int = Field(default=50, description="Checkpoint every N steps (`--save-steps`).")
    save_total_limit: int = Field(default=2, description="Checkpoints kept (the last N).")
    logging_steps: int = Field(default=1, description="Log every N steps; 1: loss_curve.json has one point per "
                                                      "optimiser step.")
    seed: int = Field(default=0, description="Seed for data order and initialisation (`--seed`).")
    merge: bool = Field(default=False, description="Write a merged model folder instead of an adapter (`--merge`).")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in the backward pass: less "
                                         "memory, slower (`--gradient-checkpointing`).")
    checkpoint_every: int = Field(default=1, description="With gradient_checkpointing: recompute only every n-th "
                                                         "decoder layer (memory vs speed).")
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1, ...; None: CUDA when present, else CPU.")

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        return _one_of(value, METHODS, "--method")

    @field_validator("bf16")
    @classmethod
    def _bf16(cls, value: str) -> str:
        return _one_of(value, BF16_CHOICES, "--bf16")

    @field_validator("batch_size", "grad_accum")
    @classmethod
    def _positive_batch(cls, value: int) -> int:
        if value < 1:
            raise _bad("--batch-size and --grad-accum must be >= 1")
        return value

    @field_validator("max_length")
    @classmethod
    def _max_length(cls, value: int) -> int:
        if value < 32:
            raise _bad(f"--max-length must be at least 32 tokens, got {value}")
        return value

    @field_validator("lr")
    @classmethod
    def _lr(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value < 1:
            raise _bad(f"--lr must be between 0 and 1, got {value}")
        return value

    @field_validator("max_minutes")
    @classmethod
    def _max_minutes(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise _bad(f"--max-minutes must be > 0, got {value}")
        return value

    @field_validator("checkpoint_every")
    @classmethod
    def _checkpoint_every(cls, value: int) -> int:
        if value < 1:
            raise _bad(f"--checkpoint-every must be >= 1, got {value}")
        return value

    @field_validator("save_steps")
    @classmethod
    def _save_steps(cls, value: int) -> int:
        if value < 1:
            raise _bad("--save-steps must be >= 1")
        return value

    @model_validator(mode="after")
    def _schedule(self) -> Any:
        if self.epochs <= 0 and self.max_steps <= 0:
            raise _bad("--epochs must be > 0 (or give --max-steps)")
        if self.micro_batch is not None and (self.micro_batch < 1 or self.batch_size % self.micro_batch):
            raise _bad(f"--micro-batch must divide --batch-size {self.batch_size}, got {self.micro_batch}")
        return self

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-5 if self.method == "full" else 2e-4


class SFTRunConfig(RunSettings):
    """Supervised fine-tuning on RAFT data (`data_mode="raft"`) or RA-DIT LM-ft data (`"radit"`).

    RA-DIT mode turns each (question, answer) into `top_k` instances, one per retrieved chunk ("Background: ...").
    `mix_path` / `mix_ratio` add plain instruction data so the share of it in the final set is `mix_ratio`
    (RA-DIT's hybrid instruction + retrieval fine-tuning).
    """

    data_mode: str = Field(default="raft", description="raft: documents + question -> quoted chain-of-thought answer | "
                           "radit: one 'Background:' row per retrieved chunk -> the short answer (`--data-mode`).")
    answer_only_head: bool = Field(default=True, description="On CPUs: LM head and loss on the answer tokens only "
                                   "(ragtune.train.fast_loss).")
    packing: bool = Field(default=False, description="Pack examples into max_length rows instead of length-grouped "
                                                     "padded batches (`--packing`).")
    group_by_length: bool = Field(default=True, description="Batch examples of similar length together (less padding).")
    split: str = Field(default="train", description="Hash split of the data to train on: train | eval | all; never "
                                                    "train on held-out questions (`--split`).")
    limit: int | None = Field(default=None, description="Train on the first N examples (`--limit`).")
    top_k: int = Field(default=3, description="radit: retrieved chunks per question, one row each (`--top-k`).")
    retrieval_mode: str = Field(default="hybrid", description="radit: the search mode that retrieves the chunks.")
    mix_path: str | None = Field(default=None, description="Instruction JSONL to mix in: messages or prompt/completion "
                                 "(`--mix-data`).")
    mix_ratio: float = Field(default=0.0, description="Share of instruction rows in the final data, in [0, 1) "
                             "(`--mix-ratio`).")
    system_prompt: str | None = Field(default=None, description="None: the RAFT student system prompt.")

    @field_validator("data_mode")
    @classmethod
    def _data_mode(cls, value: str) -> str:
        return _one_of(value, DATA_MODES, "--data-mode")

    @field_validator("mix_ratio")
    @classmethod
    def _mix_ratio(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise _bad(f"--mix-ratio must be in [0, 1), got {value}")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        if value < 1:
            raise _bad("--top-k must be >= 1")
        return value

    @field_validator("split")
    @classmethod
    def _split(cls, value: str) -> str:
        if value not in SPLITS:
            raise _bad("--split must be train, eval or all")
        return value

    @model_validator(mode="after")
    def _mix_needs_data(self) -> Any:
        if self.mix_ratio > 0 and not self.mix_path:
            raise _bad("--mix-ratio needs --mix-data PATH (instruction data to mix in)")
        return self


class DPORunConfig(RunSettings):
    """DPO on preference pairs. `adapter` continues an SFT adapter (its frozen copy is the reference model)."""

    beta: float = Field(default=0.1, description="DPO temperature: higher keeps closer to the reference (`--beta`).")
    adapter: str | None = Field(default=None, description="An SFT adapter folder to continue (`--adapter`).")
    lr: float | None = Field(default=5e-6, description="Learning rate; DPO wants a small one (`--lr`).")
    max_length: int = Field(default=1024, description="Prompt + answer tokens kept (`--max-length`).")

    @field_validator("beta")
    @classmethod
    def _beta(cls, value: float) -> float:
        if value <= 0:
            raise _bad(f"--beta must be > 0, got {value}")
        return value

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-6


class DAPRunConfig(RunSettings):
    """Domain-adaptive pre-training: next-token loss on the corpus chunks, packed into full-length rows."""

    max_length: int = Field(default=512, description="Packed row length in tokens (`--max-length`).")
    packing: bool = Field(default=True, description="Pack the chunks into max_length rows.")
    limit: int | None = Field(default=None, description="Use the first N chunks, by chunk id (`--limit`).")
