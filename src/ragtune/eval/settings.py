"""What an evaluation shows the generator and how it decodes (`EvalSettings`), and the systems `ragtune eval` and
`ragtune compare` run (`SystemSpec`): pydantic models, validated when built.

A system of a compare YAML (its `systems:` list, or `ragtune run`'s `compare.systems`) is a `SystemSpec`, so a bad
value fails when the file is read, with a message that names the command-line option of `ragtune eval` that sets the
same thing (`--top-k must be >= 1, got 0`). Unknown fields are errors. `EvalSettings.identity()` is part of every
run's resume signature: its keys and values are exactly those of the dataclass it replaced, so answers kept by earlier
runs are reused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, field_validator

from ragtune.config import SEARCH_MODES, StrictSettings, at_least, one_of, setting_error, validation_message
from ragtune.prompts import PROMPT_STYLES, PromptStyle

Setting = Literal["closed-book", "oracle", "retrieved"]
SETTINGS: tuple[str, ...] = ("closed-book", "oracle", "retrieved")

DEFAULT_MAX_NEW_TOKENS = {"short": 32, "cot": 256}


def parse_distractors(value: str | int | Sequence[int] | None) -> list[int]:
    """`3`, `"0..9"`, `"0-9"` or `"0,1,3"` to a sorted list of K values (a sweep when there are several)."""
    if value is None:
        return [0]
    if isinstance(value, int):
        values = [value]
    elif isinstance(value, str):
        text = value.replace(" ", "")
        range_match = re.fullmatch(r"(\d+)(?:\.\.|-)(\d+)", text)
        if range_match:
            lo, hi = int(range_match.group(1)), int(range_match.group(2))
            values = list(range(min(lo, hi), max(lo, hi) + 1))
        elif re.fullmatch(r"\d+(,\d+)*", text):
            values = [int(v) for v in text.split(",")]
        else:
            raise ValueError(f"--distractors {value!r}: expected K, A..B or a comma list such as 0,1,3")
    else:
        values = [int(v) for v in value]
    if any(v < 0 for v in values):
        raise ValueError("distractor counts must be >= 0")
    return sorted(set(values))


def _setting(value: Any) -> Any:
    if value not in SETTINGS:
        raise setting_error(f"unknown setting {value!r} (--setting); expected one of: {', '.join(SETTINGS)}")
    return value


def _prompt(value: Any) -> Any:
    if value not in PROMPT_STYLES:
        raise setting_error(f"unknown prompt style {value!r} (--prompt); expected one of: {', '.join(PROMPT_STYLES)}")
    return value


# The fields EvalSettings and SystemSpec share, each with its check (setting and prompt: before the Literal's own,
# for the message) and its description, declared once.
SettingField = Annotated[Setting, BeforeValidator(_setting), Field(
    description="closed-book: the question alone | oracle: gold documents + K distractors | retrieved: the top-k "
    "hits of the workspace index (`--setting`).")]
TopK = Annotated[int, AfterValidator(lambda v: at_least(v, 1, "--top-k")), Field(
    description="Retrieved setting: chunks shown (`--top-k`).")]
RetrievalMode = Annotated[str, AfterValidator(lambda v: one_of(v, SEARCH_MODES, "--mode")), Field(
    description="Retrieved setting: hybrid | dense | bm25 (`--mode`).")]
PromptField = Annotated[PromptStyle, BeforeValidator(_prompt), Field(
    description="short: answer only | cot: the RAFT chain-of-thought student prompt (quotes, then <ANSWER>:) "
    "(`--prompt`).")]
MaxNewTokens = Annotated[int | None, AfterValidator(lambda v: at_least(v, 1, "--max-new-tokens")), Field(
    description="Token budget of an answer; None: 32 (short), 256 (cot) (`--max-new-tokens`).")]
Seed = Annotated[int, Field(description="Seed of distractor draws and generation (`--seed`).")]


class EvalSettings(StrictSettings):
    """What is shown to the generator and how it decodes. Part of every run's identity (a changed setting reruns)."""

    setting: SettingField = "oracle"
    distractors: int = Field(default=0, description="Oracle setting: K distractors shown with the gold documents "
                             "(`--distractors`).")
    k: TopK = 5
    retrieval_mode: RetrievalMode = "hybrid"
    prompt: PromptField = "short"
    max_new_tokens: MaxNewTokens = None
    batch_size: int = Field(default=8, description="Questions per generation batch, length-sorted (`--batch-size`).")
    seed: Seed = 0
    allow_unanswerable: bool | None = Field(default=None, description="Let the prompt allow 'unanswerable'; None: "
                                            "only when the question set has unanswerable questions.")
    search: dict[str, Any] = Field(default_factory=dict, description="Retrieved setting: SearchConfig fields "
                                   "(transform, retriever, reranker, ...).")

    @field_validator("distractors")
    @classmethod
    def _distractors(cls, value: int) -> int | None:
        return at_least(value, 0, "--distractors")

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value: int) -> int | None:
        return at_least(value, 1, "--batch-size")

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[self.prompt]

    def identity(self) -> dict[str, Any]:
        """The fields that change outputs (batch size does not: greedy decoding is per sequence)."""
        data = self.model_dump()
        data.pop("batch_size")
        if not data["search"]:  # runs made before search options existed keep their signature (and answers)
            data.pop("search")
        data["max_new_tokens"] = self.new_tokens
        return data


class SystemSpec(StrictSettings):
    """A system to evaluate: a generator (model + optional LoRA adapter) and how it is shown documents."""

    name: str = Field(default="", description="The system's name in the report (`--run-name`).")
    model: str | None = Field(default=None, description="Generator: bundled name, local folder, .gguf, hub id or "
                              "openai:NAME; None: the bundled SmolLM2-135M-Instruct (`--model`).")
    adapter: str | None = Field(default=None, description="A LoRA adapter folder (`--adapter`).")
    setting: SettingField = "oracle"
    distractors: str | int | list[int] = Field(default=0, description="Oracle setting: K distractors, or a sweep "
                                               "such as 0..9 or 0,2,4: the robustness curve (`--distractors`).")
    k: TopK = 5
    retrieval_mode: RetrievalMode = "hybrid"
    prompt: PromptField = "short"
    max_new_tokens: MaxNewTokens = None
    seed: Seed = 0
    search: dict[str, Any] | None = Field(default=None, description="Retrieved setting: SearchConfig fields, e.g. "
                                          "{transform: hyde} or {retriever: PATH}.")
    # bf16 generates ~2x faster on a CPU with AVX512-BF16 / AMX (measured here), with answers that differ slightly
    # from fp32's, so the resolved dtype is part of the signature.
    dtype: str | None = Field(default=None, description="Local models: None (fp32 on CPU) | auto (bf16 where the CPU "
                              "has it) | float32 | bfloat16 | float16 (`--dtype`).")
    # Answers differ by engine (kernels, quantised weights), so an engine other than transformers is part of the
    # signature.
    engine: str | None = Field(default=None, description="Which engine generates: transformers (None) | ct2 | "
                               "llamacpp | vllm (`--engine`).")

    @field_validator("distractors")
    @classmethod
    def _distractors(cls, value: str | int | list[int]) -> str | int | list[int]:
        try:
            parse_distractors(value)
        except ValueError as exc:
            raise setting_error(str(exc)) from None
        return value

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SystemSpec:
        """A system from a YAML mapping (`mode`, `top_k` and `prompt_style` are accepted for their fields); a bad
        value raises ValueError with one line naming the field."""
        aliases = {"mode": "retrieval_mode", "top_k": "k", "prompt_style": "prompt"}
        data = {aliases.get(k, k): v for k, v in data.items()}
        known = set(cls.model_fields)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown system field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(validation_message(exc)) from None

    def ks(self) -> list[int]:
        return parse_distractors(self.distractors) if self.setting == "oracle" else [0]

    @property
    def explicit_dtype(self) -> str | None:
        """The dtype when one was asked for, `auto` resolved for this machine (bf16 on a CPU with native bf16), so an
        auto run never reuses fp32 answers; None for the default (fp32 on CPU, or an auto that resolves to fp32), so
        answers kept before the field existed keep their signature and run folder."""
        if self.dtype in (None, "auto"):
            if self.dtype is None or (self.model or "").startswith("openai:"):
                return None
            from ragtune.llm import resolve_dtype

            resolved = resolve_dtype("auto")
            return None if resolved == "float32" else resolved
        return self.dtype

    def settings(self, batch_size: int) -> EvalSettings:
        return EvalSettings(
            setting=self.setting,
            distractors=self.ks()[0],
            k=self.k,
            retrieval_mode=self.retrieval_mode,
            prompt=self.prompt,
            max_new_tokens=self.max_new_tokens,
            batch_size=batch_size,
            seed=self.seed,
            search=dict(self.search or {}) if self.setting == "retrieved" else {},
        )

    def describe(self) -> dict[str, Any]:
        from ragtune.models import default_generator

        return {
            "name": self.name,
            "model": self.model or default_generator(),
            "adapter": self.adapter,
            "setting": self.setting,
            "distractors": self.ks() if self.setting == "oracle" else None,
            "k": self.k if self.setting == "retrieved" else None,
            "retrieval_mode": self.retrieval_mode if self.setting == "retrieved" else None,
            "search": (self.search or None) if self.setting == "retrieved" else None,
            "prompt": self.prompt,
            "max_new_tokens": self.settings(1).new_tokens,
            "seed": self.seed,
            "dtype": self.dtype,
            "engine": self.engine or "transformers",
        }
