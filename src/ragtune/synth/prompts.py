"""Prompts: what the teacher is asked. The student's prompt (and the title rule, the quote and answer tags) is the
foundation's `ragtune.prompts`, shared with training, evaluation and serving; `student_messages` renders a RAFT
example with it.

Teacher prompts are few-shot with an explicit output format, because a small teacher (the bundled 135M model)
follows a worked example far better than an instruction.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragtune.llm.base import Message
from ragtune.prompts import (
    ANSWER_TAG,
    BEGIN_QUOTE,
    END_QUOTE,
    STUDENT_SYSTEM,
    render_documents,
    student_conversation,
    with_title,
)
from ragtune.prompts import shown_text as shown_text  # re-exported: synth/raft.py reads it as `prompts.shown_text`
from ragtune.records import ContextDoc
from ragtune.synth.records import RaftExample

QUESTION_SYSTEM = (
    "You write questions for a reading test. Each question must be answerable from the text alone, "
    "ask about one fact, and use your own words instead of copying a sentence. Write one question per line, numbered."
)

_SHOT_TEXT = (
    "The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair in Paris. It is 330 metres tall "
    "and was the tallest man-made structure in the world until the Chrysler Building was finished in 1930."
)
_SHOT_QUESTIONS = [
    "When was the Eiffel Tower completed?",
    "How tall is the Eiffel Tower?",
    "Which building became taller than the Eiffel Tower in 1930?",
]
_SHOT_COT = (
    f"The question asks when the tower was completed. The document says {BEGIN_QUOTE}The Eiffel Tower was completed "
    f"in 1889 as the entrance arch to the World's Fair in Paris.{END_QUOTE} So it was completed in 1889.\n"
    f"{ANSWER_TAG} 1889"
)

COT_SYSTEM = (
    "You answer a question using the documents given. First explain step by step how the documents answer it. "
    f"Copy the sentence you rely on exactly, word for word, between {BEGIN_QUOTE} and {END_QUOTE}. "
    f"End with a final line {ANSWER_TAG} followed by a short answer."
)

def _question_request(text: str, n: int) -> str:
    return f"Text:\n{text}\n\nWrite {n} different questions that this text answers. One question per line, numbered."


def question_messages(chunk_text: str, n: int, title: str = "") -> list[Message]:
    """The teacher's question-writing conversation for one chunk."""
    text = with_title(title, chunk_text)
    shots = "\n".join(f"{i}. {q}" for i, q in enumerate(_SHOT_QUESTIONS[: max(1, min(n, 3))], start=1))
    return [
        {"role": "system", "content": QUESTION_SYSTEM},
        {"role": "user", "content": _question_request(_SHOT_TEXT, max(1, min(n, 3)))},
        {"role": "assistant", "content": shots},
        {"role": "user", "content": _question_request(text, n)},
    ]


def _cot_request(docs: Sequence[ContextDoc], question: str, answer_hint: str | None = None) -> str:
    hint = f"\nThe correct answer is: {answer_hint}. Explain it from the documents." if answer_hint else ""
    return (
        f"{render_documents(docs)}\n\nQuestion: {question}{hint}\n"
        f"Quote the document exactly between {BEGIN_QUOTE} and {END_QUOTE}, then end with {ANSWER_TAG} and the answer."
    )


def cot_messages(docs: Sequence[ContextDoc], question: str, answer_hint: str | None = None) -> list[Message]:
    """The teacher's answer-writing conversation: worked example, then the documents and the question."""
    shot_doc = [ContextDoc(doc_id="shot", text=_SHOT_TEXT)]
    return [
        {"role": "system", "content": COT_SYSTEM},
        {"role": "user", "content": _cot_request(shot_doc, _SHOT_QUESTIONS[0])},
        {"role": "assistant", "content": _SHOT_COT},
        {"role": "user", "content": _cot_request(docs, question, answer_hint)},
    ]


def retry_messages(previous: list[Message], bad_output: str, problem: str) -> list[Message]:
    """A second try: the teacher sees its own invalid output and what was wrong with it."""
    fix = {
        "quote not in oracle": "A quoted sentence does not appear in the documents. Copy sentences exactly.",
        "no quote": f"Quote the supporting sentence between {BEGIN_QUOTE} and {END_QUOTE}.",
        "too few quotes": f"Quote the supporting sentences between {BEGIN_QUOTE} and {END_QUOTE}.",
        "no <ANSWER>: tag": f"End with a line that starts with {ANSWER_TAG}.",
        "empty answer": f"Write the answer after {ANSWER_TAG}.",
    }.get(problem, "Follow the format of the example exactly.")
    return [
        *previous,
        {"role": "assistant", "content": bad_output},
        {"role": "user", "content": f"That answer is not valid: {problem}. {fix} Write the whole answer again."},
    ]


def student_messages(example: RaftExample, system_prompt: str | None = STUDENT_SYSTEM) -> list[Message]:
    """The conversation a student is trained on / evaluated with for one RAFT example (without the assistant turn)."""
    return student_conversation(example.question, example.documents, system_prompt)
