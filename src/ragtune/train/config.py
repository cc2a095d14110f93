"""Settings of the generator trainers, one dataclass per trainer in TRL's style (`SFTRunConfig`, `DPORunConfig`, ...).

They hold what ragtune decides (method, LoRA shape, data mode, where checkpoints go); `ragtune.train.common` turns
them into TRL's own `SFTConfig` / `DPOConfig`. Every field has a default that runs offline on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

METHODS = ("lora", "qlora", "full")
DATA_MODES = ("raft", "radit")
BF16_CHOICES = ("auto", "on", "off")


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


@dataclass
class LoraSettings:
    """The LoRA adapter's shape. `alpha` defaults to 2 x rank (the common choice; scale = alpha / r = 2)."""

    r: int = 16
    alpha: int | None = None
    dropout: float = 0.05
    target_modules: str = "all-linear"  # or a comma-separated list: q_proj,v_proj
    # Which decoder layers carry adapters: "all", "top:N" (the last N) or "A-B" (0-based, inclusive). Backpropagation
    # stops at the lowest adapted layer, so adapting the top half of SmolLM2's 30 layers makes a CPU step ~1.5x faster.
    layers: str = "all"

    def check(self) -> None:
        if self.r < 1:
            raise TrainConfigError(f"--lora-r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainConfigError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules.strip():
            raise TrainConfigError("--target-modules must name modules, or be all-linear")
        parse_layers(self.layers, None)

    def modules(self) -> str | list[str]:
        names = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        return "all-linear" if names == ["all-linear"] else names


@dataclass
class RunSettings:
    """What every generator trainer shares: optimisation, precision, checkpoints, output."""

    method: str = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    # A time budget: the first steps are timed and the schedule is set to the step count that fits (never cut short)
    max_minutes: float | None = None
    lr: float | None = None  # default: 2e-4 for adapters, 2e-5 for full fine-tuning
    batch_size: int = 4
    grad_accum: int = 2
    # Rows per forward pass; None: 1 on a CPU (no padding, and PyTorch's flash attention kernel instead of a
    # materialised mask: 2.6x the tokens/s at under half the memory of padded pairs), batch_size on a GPU. The
    # optimiser step still sees batch_size x grad_accum rows, with the loss averaged over all their answer tokens.
    micro_batch: int | None = None
    max_length: int = 1024
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    bf16: str = "auto"  # autocast in bf16 where the hardware has fast bf16 (CUDA, or a CPU with AVX512-BF16 / AMX)
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1  # every step: the loss curve in loss_curve.json has one point per optimiser step
    seed: int = 0
    merge: bool = False  # write a merged model folder instead of an adapter
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1  # with gradient_checkpointing: recompute only every n-th decoder layer (memory vs speed)
    device: str | None = None  # None: CUDA when present, else CPU

    def check(self) -> None:
        if self.method not in METHODS:
            raise TrainConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        self.lora.check()
        if self.bf16 not in BF16_CHOICES:
            raise TrainConfigError(f"--bf16 must be one of {', '.join(BF16_CHOICES)}, got {self.bf16!r}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise TrainConfigError("--epochs must be > 0 (or give --max-steps)")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise TrainConfigError("--batch-size and --grad-accum must be >= 1")
        if self.micro_batch is not None and (self.micro_batch < 1 or self.batch_size % self.micro_batch):
            raise TrainConfigError(f"--micro-batch must divide --batch-size {self.batch_size}, got {self.micro_batch}")
        if self.max_length < 32:
            raise TrainConfigError(f"--max-length must be at least 32 tokens, got {self.max_length}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise TrainConfigError(f"--lr must be between 0 and 1, got {self.lr}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise TrainConfigError(f"--max-minutes must be > 0, got {self.max_minutes}")
        if self.checkpoint_every < 1:
            raise TrainConfigError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if self.save_steps < 1:
            raise TrainConfigError("--save-steps must be >= 1")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-5 if self.method == "full" else 2e-4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SFTRunConfig(RunSettings):
    """Supervised fine-tuning on RAFT data (`data_mode="raft"`) or RA-DIT LM-ft data (`"radit"`).

    RA-DIT mode turns each (question, answer) into `top_k` instances, one per retrieved chunk ("Background: ...").
    `mix_path` / `mix_ratio` add plain instruction data so the share of it in the final set is `mix_ratio`
    (RA-DIT's hybrid instruction + retrieval fine-tuning).
    """

    data_mode: str = "raft"
    answer_only_head: bool = True  # on CPUs: LM head and loss on the answer tokens only (ragtune.train.fast_loss)
    packing: bool = False
    group_by_length: bool = True
    split: str = "train"  # the hash split: never train on held-out questions
    limit: int | None = None
    top_k: int = 3
    retrieval_mode: str = "hybrid"
    mix_path: str | None = None
    mix_ratio: float = 0.0
    system_prompt: str | None = None  # None: the RAFT student system prompt

    def check(self) -> None:
        super().check()
        if self.data_mode not in DATA_MODES:
            raise TrainConfigError(f"--data-mode must be one of {', '.join(DATA_MODES)}, got {self.data_mode!r}")
        if not 0.0 <= self.mix_ratio < 1.0:
            raise TrainConfigError(f"--mix-ratio must be in [0, 1), got {self.mix_ratio}")
        if self.mix_ratio > 0 and not self.mix_path:
            raise TrainConfigError("--mix-ratio needs --mix-data PATH (instruction data to mix in)")
        if self.top_k < 1:
            raise TrainConfigError("--top-k must be >= 1")
        if self.split not in ("train", "eval", "all"):
            raise TrainConfigError("--split must be train, eval or all")


@dataclass
class DPORunConfig(RunSettings):
    """DPO on preference pairs. `adapter` continues an SFT adapter (its frozen copy is the reference model)."""

    beta: float = 0.1
    adapter: str | None = None
    lr: float | None = 5e-6
    max_length: int = 1024

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-6

    def check(self) -> None:
        super().check()
        if self.beta <= 0:
            raise TrainConfigError(f"--beta must be > 0, got {self.beta}")


@dataclass
class DAPRunConfig(RunSettings):
    """Domain-adaptive pre-training: next-token loss on the corpus chunks, packed into full-length rows."""

    max_length: int = 512
    packing: bool = True
    limit: int | None = None
