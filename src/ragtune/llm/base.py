"""One interface over every text generator ragtune talks to: local transformers models and OpenAI-compatible servers.

Stages (synthesis, evaluation, retriever training, serving) depend on this interface only, never on a backend.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ragtune.llm.capabilities import Capabilities, capabilities_of, check, engine_of

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
OnText = Callable[[int, str], None]  # (conversation index, the next piece of its answer's text)


@dataclass
class GenerationConfig:
    """Decoding settings. The default is greedy, which makes evaluation deterministic."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Generation:
    """One completion, with the accounting every caller wants (tokens, time)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = "stop"
    raw: dict[str, Any] | None = None


@dataclass
class Usage:
    """Running totals of what a backend spent, so a synthesis run can report tokens, retries and dollars."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    seconds: float = 0.0
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, generation: Generation, cost_usd: float = 0.0) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += generation.prompt_tokens
            self.completion_tokens += generation.completion_tokens
            self.seconds += generation.seconds
            self.cost_usd += cost_usd

    def count(self, retries: int = 0, failures: int = 0) -> None:
        with self._lock:
            self.retries += retries
            self.failures += failures

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in fields_of_usage()}
        data["seconds"] = round(self.seconds, 3)
        data["cost_usd"] = round(self.cost_usd, 6)
        return data


def fields_of_usage() -> list[str]:
    return [f.name for f in fields(Usage) if not f.name.startswith("_")]


_USAGE_LOCK = threading.Lock()


class LLM(ABC):
    """A chat model. Backends implement `generate` and `loglikelihood`; `chat` is a convenience over `generate`."""

    name: str = "llm"
    engine: str = ""  # "transformers", "llamacpp", ...; empty: named after the backend module (see capabilities)

    @property
    def capabilities(self) -> Capabilities:
        """What this engine can do (log-likelihoods, streaming, cancel, LoRA, several adapters, continuous batching)."""
        return capabilities_of(self)

    def require(self, *capabilities: str, purpose: str = "") -> None:
        """Raise `CapabilityError` (naming the engine and the capability) unless this engine has every capability."""
        check(engine_of(self), self.capabilities, capabilities, purpose)

    @property
    def usage(self) -> Usage:
        """Tokens, requests, retries and cost so far (created on first use, so subclasses need no __init__ call)."""
        with _USAGE_LOCK:
            current = self.__dict__.get("_usage")
            if current is None:
                current = self.__dict__["_usage"] = Usage()
            return current

    @abstractmethod
    def generate(
        self, conversations: list[list[Message]], config: GenerationConfig | None = None, batch_size: int = 8
    ) -> list[Generation]:
        """Complete each conversation (batched where the backend can); results in input order."""

    @abstractmethod
    def loglikelihood(self, requests: list[tuple[list[Message], str]], batch_size: int = 8) -> list[float]:
        """Sum of log p(continuation tokens | conversation rendered with the chat template, as the assistant turn)."""

    def generate_stream(
        self, conversations: list[list[Message]], on_text: OnText, config: GenerationConfig | None = None,
        batch_size: int = 8,
    ) -> list[Generation]:
        """`generate`, also calling `on_text(i, piece)` as the text of conversation i grows, so a server can show
        tokens while they are produced. The pieces of a conversation concatenate to its `Generation.text`.

        This default reports each answer as one piece once `generate` returns; backends that can do better (a local
        model, token by token) override it. Callbacks run on the generating thread and must be cheap.
        """
        outs = self.generate(conversations, config, batch_size)
        for i, gen in enumerate(outs):
            if gen.text:
                on_text(i, gen.text)
        return outs

    def choice_logprobs(self, conversations: list[list[Message]], options: list[str], batch_size: int = 8
                        ) -> list[list[float]]:
        """log p(option | conversation) of each option as the whole assistant answer, per conversation.

        Used to read a model's judgement without generating (an LLM reranker's P("yes"), an LLM router). This
        default scores each option with `loglikelihood`; a local backend overrides it with one forward pass.
        """
        flat = self.loglikelihood([(conv, o) for conv in conversations for o in options], batch_size=batch_size)
        return [flat[i * len(options) : (i + 1) * len(options)] for i in range(len(conversations))]

    def chat(self, messages: list[Message], config: GenerationConfig | None = None) -> str:
        return self.generate([messages], config)[0].text


class ChatTemplatePrompts:
    """Prompts rendered and tokenised by the model's own Hugging Face tokenizer and chat template, for engines that
    run their own kernels on token ids (CTranslate2, llama.cpp): they then see exactly the tokens transformers sees.
    Needs `self.tokenizer` and `self.max_length`."""

    tokenizer: Any
    max_length: int

    def render(self, messages: list[Message]) -> str:
        """The prompt string for a conversation, with the model's chat template and the assistant turn opened."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode(self, messages: list[Message], room: int) -> list[int]:
        ids = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
        return ids[-max(16, self.max_length - room):]  # keep the end: the question and the opened assistant turn
