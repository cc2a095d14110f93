"""Checks on teacher output. A RAFT example is only as good as its quotes: the student learns to copy what sits
between the quote markers, so a quote that is not in the oracle teaches it to invent evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from ragtune.prompts import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE, quoted_spans  # the RAFT vocabulary, from the foundation

_OUTER = " \t\n\"'“”‘’`"
_NUMBERING = re.compile(r"^\s*(?:[-*•]|\(?\d{1,2}[.):]|Q\d{1,2}[.):]?|Question\s*\d*\s*[.):])\s*", re.IGNORECASE)


def normalize_ws(text: str) -> str:
    """Collapse every run of whitespace to one space (teachers re-wrap lines when they quote)."""
    return " ".join(text.split())


def clean_quote(quote: str) -> str:
    quote = normalize_ws(quote).strip(_OUTER)
    for ellipsis in ("...", "…"):
        quote = quote.removeprefix(ellipsis).removesuffix(ellipsis).strip(_OUTER)
    return quote


def clean_quotes(text: str) -> list[str]:
    """Every quoted span, cleaned (`clean_quote`), in order; empty ones kept so a check can count them."""
    return [clean_quote(q) for q in quoted_spans(text)]


def quote_verbatim(quote: str, documents: list[str]) -> bool:
    """Whether a cleaned quote occurs verbatim, whitespace-normalized, in one of the documents: the strict rule of
    synthesis (case and punctuation count; evaluation's lenient rule is `ragtune.metrics.quote_in`)."""
    return bool(quote) and any(quote in normalize_ws(doc) for doc in documents)


@dataclass
class CotCheck:
    """The verdict on one chain-of-thought answer; `cot_answer` is the cleaned text to train on."""

    valid: bool
    reason: str = ""
    cot_answer: str = ""
    answer: str = ""
    quotes: list[str] = field(default_factory=list)
    quotes_ok: int = 0


def split_answer(text: str) -> tuple[str, str] | None:
    """(reasoning, final answer) around the last <ANSWER>: tag; the answer is its first non-empty line."""
    i = text.rfind(ANSWER_TAG)
    if i == -1:
        return None
    rest = text[i + len(ANSWER_TAG) :].strip()
    answer = rest.split("\n", 1)[0].strip() if rest else ""
    return text[:i].rstrip(), answer


def check_cot(text: str, oracles: list[str], min_quotes: int = 1) -> CotCheck:
    """Validate a teacher's CoT answer against the oracle document(s).

    Valid means: balanced quote markers, at least `min_quotes` quotes, every quote found in an oracle, and a non-empty
    final answer after `<ANSWER>:`. The returned `cot_answer` ends at the answer line, dropping trailing chatter.
    """
    parts = split_answer(text)
    if parts is None:
        return CotCheck(False, "no <ANSWER>: tag")
    reasoning, answer = parts
    if not answer:
        return CotCheck(False, "empty answer")
    cot = f"{reasoning}\n{ANSWER_TAG} {answer}".strip()
    if reasoning.count(BEGIN_QUOTE) != reasoning.count(END_QUOTE):
        return CotCheck(False, "unbalanced quote markers", cot, answer)
    quotes = clean_quotes(reasoning)
    ok = sum(quote_verbatim(q, oracles) for q in quotes)
    if len(quotes) < min_quotes:
        return CotCheck(False, "no quote" if not quotes else "too few quotes", cot, answer, quotes, ok)
    if ok < len(quotes):
        return CotCheck(False, "quote not in oracle", cot, answer, quotes, ok)
    return CotCheck(True, "", cot, answer, quotes, ok)


def parse_questions(text: str, limit: int) -> list[str]:
    """Questions from a teacher's numbered / bulleted / one-per-line list, deduplicated, at most `limit`."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        line = _NUMBERING.sub("", line).strip().strip(_OUTER)
        if not line or len(line.split()) < 3:
            continue
        if "?" in line:
            line = line[: line.index("?") + 1]
        elif not re.match(
            r"(?i)^(who|what|when|where|why|how|which|whose|whom|is|are|was|were|do|does|did|can)\b", line
        ):
            continue
        key = normalize_ws(line).lower()
        if key not in seen:
            seen.add(key)
            out.append(line)
        if len(out) >= limit:
            break
    return out


def question_problem(question: str, chunk: str) -> str | None:
    """Why a question is unusable, or None: too short, or a copy of (a sentence of) the chunk."""
    q = normalize_ws(question).rstrip("?").strip()
    if len(q.split()) < 3:
        return "question too short"
    c = normalize_ws(chunk)
    if len(q.split()) >= 8 and q.lower() in c.lower():
        return "question copies the chunk"
    if SequenceMatcher(None, q.lower(), c.lower()).ratio() > 0.8:
        return "question copies the chunk"
    return None
