"""Prompts for evaluation: a short-answer prompt and the RAFT chain-of-thought prompt.

Both render documents as RAFT does (`<DOCUMENT>title\\ntext</DOCUMENT>` blocks, then the question), so a model tuned
on RAFT data sees at evaluation the layout it was trained on. The training issue compares a tuned model with the
base model's best of the two styles, which is why both exist: a small base model often does better with the short
prompt, a RAFT-tuned one with the CoT prompt it learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ragtune.eval.datasets import EvalDoc
from ragtune.llm.base import Message

PromptStyle = Literal["short", "cot"]
PROMPT_STYLES: tuple[str, ...] = ("short", "cot")

SYSTEM_PROMPT = "You are a helpful assistant that answers questions accurately and concisely."

SHORT_INSTRUCTIONS = (
    "Answer the question using the documents above. Reply with the answer only: a few words, no explanation."
)
SHORT_CLOSED_BOOK = "Answer the question. Reply with the answer only: a few words, no explanation."
ABSTAIN_INSTRUCTION = ' If the documents do not contain the answer, reply "unanswerable".'

# The RAFT paper's instruction (gorilla/raft), verbatim apart from line breaks, so tuned models meet their format.
COT_INSTRUCTIONS = (
    "Answer this question using the information given in the context above. Here is things to pay attention to:\n"
    "- First provide step-by-step reasoning on how to answer the question.\n"
    "- In the reasoning, if you need to copy paste some sentences from the context, include them in "
    "##begin_quote## and ##end_quote##. This would mean that things outside of ##begin_quote## and "
    "##end_quote## are not directly copy paste from the context.\n"
    "- End your response with final answer in the form <ANSWER>: $answer, the answer should be succinct."
)
COT_CLOSED_BOOK = (
    "Answer this question. First provide step-by-step reasoning on how to answer the question, then end your "
    "response with the final answer in the form <ANSWER>: $answer, the answer should be succinct."
)
COT_ABSTAIN = ' If the context does not contain the answer, the final answer is "<ANSWER>: unanswerable".'


def render_document(doc: EvalDoc) -> str:
    """One RAFT document block; the title line lets HotpotQA's bridge questions name the entity."""
    body = f"{doc.title}\n{doc.text}" if doc.title else doc.text
    return f"<DOCUMENT>{body}</DOCUMENT>"


def render_documents(docs: Sequence[EvalDoc]) -> str:
    return "\n".join(render_document(d) for d in docs)


def build_user_prompt(
    question: str, docs: Sequence[EvalDoc], style: PromptStyle = "short", allow_unanswerable: bool = False
) -> str:
    """The user turn: documents (if any), the question, then the instructions of the style."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of: {', '.join(PROMPT_STYLES)}")
    parts = []
    if docs:
        parts.append(render_documents(docs))
    parts.append(question.strip())
    if style == "short":
        text = SHORT_INSTRUCTIONS if docs else SHORT_CLOSED_BOOK
        if allow_unanswerable and docs:
            text += ABSTAIN_INSTRUCTION
    else:
        text = COT_INSTRUCTIONS if docs else COT_CLOSED_BOOK
        if allow_unanswerable and docs:
            text += COT_ABSTAIN
    parts.append(text)
    return "\n".join(parts)


def build_messages(
    question: str,
    docs: Sequence[EvalDoc],
    style: PromptStyle = "short",
    allow_unanswerable: bool = False,
    system_prompt: str | None = SYSTEM_PROMPT,
) -> list[Message]:
    """The chat conversation given to the generator (a system turn, then the user turn)."""
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": build_user_prompt(question, docs, style, allow_unanswerable)})
    return messages
