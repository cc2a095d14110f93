"""Guardrails of the RAG server: request limits, prompt-injection screening of retrieved text, PII redaction.

Retrieved chunks are data, not instructions. A chunk that reads like an instruction to the model ("ignore the previous
instructions", "you are now ...", a forged chat-template turn) is flagged; under the default policy it is left out of
the prompt altogether, so it cannot steer the answer, and the response lists it under `ragtune.flagged` so the
operator can fix the source. Chat-template control tokens are stripped from every chunk whatever the policy, since
they would otherwise open a fake system or assistant turn inside the user message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

InjectionPolicy = Literal["drop", "flag"]


class Limits(BaseModel):
    """Bounds on one request. Everything past them is refused with 400/413 before any model work, and the deadline
    bounds the model time one request can take, so no request can hold the shared model for the others. Fixed
    wire-format bounds (id and text lengths, seed range, paging) live in `serve.schemas`."""

    max_body_bytes: int = 1_000_000
    max_messages: int = 64
    max_content_parts: int = 32  # text parts of one message's content list
    max_query_chars: int = 4_000
    max_prompt_chars: int = 32_000  # all message contents together
    max_tokens: int = 1024
    max_stop: int = 4  # OpenAI's own bound; each list costs a vocabulary scan (0.1 s per stop on a CPU core)
    max_stop_chars: int = 100  # one stop string
    max_logit_bias: int = 300  # entries (accepted and ignored, OpenAI's bound)
    max_k: int = 50
    max_filters: int = 16
    generation_timeout_s: float = 300.0  # per request, queueing included; past it the request gets a 503
    stall_margin_s: float = 30.0  # /health reports degraded when a batch runs longer than the timeout plus this


# Phrases that address the model rather than inform the reader. Kept specific: a false positive drops a useful chunk.
_INJECTION_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("ignore-instructions", re.compile(
        r"\b(ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}\b(previous|prior|above|earlier|all|any|system|"
        r"preceding)\b[^.\n]{0,20}\b(instructions?|prompts?|rules|directions|context|guidelines)\b", re.I)),
    ("role-override", re.compile(
        r"\b(you are now|from now on,? you (are|will|must)|act as (an?|the) (unfiltered|jailbroken|different)|"
        r"pretend (to be|you are))\b", re.I)),
    ("new-instructions", re.compile(r"\b(new|updated|real|actual) (system )?instructions?\s*:", re.I)),
    ("reveal-prompt", re.compile(
        r"\b(reveal|print|repeat|show|output)\b[^.\n]{0,30}\b(system prompt|hidden instructions|your instructions)\b",
        re.I)),
    ("answer-override", re.compile(
        r"\b(always|only) (answer|respond|reply|say)\b[^.\n]{0,40}\b(regardless|no matter|whatever)\b", re.I)),
    ("chat-markup", re.compile(
        r"<\|(im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id)\|>|\[/?INST\]|<</?SYS>>|"
        r"^\s*(system|assistant)\s*:", re.I | re.M)),
]

_CONTROL_TOKENS = re.compile(r"<\|[a-z_]{2,30}\|>|\[/?INST\]|<</?SYS>>", re.I)


@dataclass(frozen=True)
class InjectionFinding:
    rule: str
    excerpt: str


def find_injection(text: str) -> InjectionFinding | None:
    """The first instruction-like passage in `text`, or None."""
    for rule, pattern in _INJECTION_PATTERNS:
        m = pattern.search(text)
        if m:
            start, end = max(0, m.start() - 20), min(len(text), m.end() + 20)
            return InjectionFinding(rule, text[start:end].strip())
    return None


def strip_control_tokens(text: str) -> str:
    """Remove chat-template control tokens so a chunk cannot open a turn of its own."""
    return _CONTROL_TOKENS.sub(" ", text)


# -- PII redaction (request logs) --------------------------------------------------------------------------------------
_PII_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("CARD", re.compile(r"\b(?:\d[ -]?){13,19}\b")),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b")),
    ("SSN", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("PHONE", re.compile(r"(?<![\w-])\+?\d{1,3}?[ .-]?\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]\d{3,4}\b")),
    ("IP", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")),
]


def redact_pii(text: str) -> str:
    """Replace e-mail addresses, card / phone / social-security numbers, IBANs and IP addresses by [KIND].

    Pattern-based: it catches the common formats and is meant for logs, not as a compliance guarantee.
    """
    for kind, pattern in _PII_PATTERNS:
        text = pattern.sub(f"[{kind}]", text)
    return text
