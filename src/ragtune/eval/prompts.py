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

# The short style: one worked example (user / assistant), then the question. On 8 HotpotQA + 8 SQuAD questions the
# one-shot "Question: ... / Answer with a short phrase taken from the documents." prompt gave the bundled 135M model
# the best F1 of six variants (0.41 vs 0.24 for a bare "reply with the answer only" instruction on HotpotQA): a
# small model copies the length of the example's answer far better than it follows an instruction about length.
SHORT_INSTRUCTIONS = "Answer with a short phrase taken from the documents."
SHORT_CLOSED_BOOK = "Answer with a short phrase."
ABSTAIN_INSTRUCTION = ' If the documents do not contain the answer, reply "unanswerable".'
_SHOT_DOC = (
    "<DOCUMENT>Eiffel Tower\nThe Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair in "
    "Paris. It is 330 metres tall.</DOCUMENT>"
)
_SHOT_QUESTION = "When was the Eiffel Tower completed?"
_SHOT_ANSWER = "1889"

# The chain-of-thought style is the RAFT student prompt of `ragtune.synth.prompts` (what RAFT training shows the
# student), so a tuned model is evaluated on exactly the layout it learned. The fallback is the same text, for a
# build without the synthesis stage.
_FALLBACK_STUDENT_SYSTEM = (
    "You are a helpful assistant that answers questions from the documents provided. Reason step by step, quote "
    "the supporting text between ##begin_quote## and ##end_quote##, and end with <ANSWER>: followed by the answer."
)
COT_CLOSED_BOOK_SYSTEM = (
    "You are a helpful assistant. Reason step by step, then end with <ANSWER>: followed by a short answer."
)
COT_ABSTAIN = ' If the documents do not contain the answer, end with "<ANSWER>: unanswerable".'


def student_system_prompt() -> str:
    try:
        from ragtune.synth.prompts import STUDENT_SYSTEM
    except ImportError:
        return _FALLBACK_STUDENT_SYSTEM
    return STUDENT_SYSTEM


def render_document(doc: EvalDoc) -> str:
    """One RAFT document block, title on the first line (HotpotQA's bridge questions need the entity's name).

    Same rule as `ragtune.synth.prompts.render_documents`: a text that already starts with its title is not
    prefixed twice.
    """
    body = f"{doc.title}\n{doc.text}" if doc.title and not doc.text.startswith(doc.title) else doc.text
    return f"<DOCUMENT>{body}</DOCUMENT>"


def render_documents(docs: Sequence[EvalDoc]) -> str:
    return "\n".join(render_document(d) for d in docs)


def build_user_prompt(
    question: str, docs: Sequence[EvalDoc], style: PromptStyle = "short", allow_unanswerable: bool = False
) -> str:
    """The user turn: documents (if any), a blank line, "Question: ...", and for the short style the instruction."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of: {', '.join(PROMPT_STYLES)}")
    question_line = f"Question: {question.strip()}"
    if style == "cot":  # the RAFT student layout, exactly
        return f"{render_documents(docs)}\n\n{question_line}" if docs else question_line
    return _short_turn(render_documents(docs) if docs else "", question_line, allow_unanswerable)


def _short_turn(documents: str, question_line: str, allow_unanswerable: bool) -> str:
    instruction = SHORT_INSTRUCTIONS if documents else SHORT_CLOSED_BOOK
    if allow_unanswerable and documents:
        instruction += ABSTAIN_INSTRUCTION
    body = f"{documents}\n\n{question_line}" if documents else question_line
    return f"{body}\n{instruction}"


def _short_example(has_docs: bool, allow_unanswerable: bool) -> list[Message]:
    user = _short_turn(_SHOT_DOC if has_docs else "", f"Question: {_SHOT_QUESTION}", allow_unanswerable)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _SHOT_ANSWER}]


def system_prompt_for(style: PromptStyle, has_docs: bool, allow_unanswerable: bool = False) -> str:
    if style == "short":
        return SYSTEM_PROMPT
    if not has_docs:
        return COT_CLOSED_BOOK_SYSTEM
    return student_system_prompt() + (COT_ABSTAIN if allow_unanswerable else "")


def build_messages(
    question: str,
    docs: Sequence[EvalDoc],
    style: PromptStyle = "short",
    allow_unanswerable: bool = False,
    system_prompt: str | None = None,
) -> list[Message]:
    """The chat conversation given to the generator: a system turn (the style's default unless given), for the short
    style one worked example, then the user turn.

    Pass `system_prompt=""` to send no system turn (the chat template then adds the model's own default, if any).
    """
    system = system_prompt if system_prompt is not None else system_prompt_for(style, bool(docs), allow_unanswerable)
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    if style == "short":
        messages += _short_example(bool(docs), allow_unanswerable)
    messages.append({"role": "user", "content": build_user_prompt(question, docs, style, allow_unanswerable)})
    return messages
