"""Prompts: what the teacher is asked, and what the student is shown at training and evaluation time.

Teacher prompts are few-shot with an explicit output format, because a small teacher (the bundled 135M model)
follows a worked example far better than an instruction. The student prompt lives here too, so training, evaluation
and export render a RAFT example the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragtune.llm.base import Message
from ragtune.synth.records import ContextDoc, RaftExample
from ragtune.synth.validate import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE

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

STUDENT_SYSTEM = (
    "You are a helpful assistant that answers questions from the documents provided. Reason step by step, quote "
    f"the supporting text between {BEGIN_QUOTE} and {END_QUOTE}, and end with {ANSWER_TAG} followed by the answer."
)


def _question_request(text: str, n: int) -> str:
    return f"Text:\n{text}\n\nWrite {n} different questions that this text answers. One question per line, numbered."


def question_messages(chunk_text: str, n: int, title: str = "") -> list[Message]:
    """The teacher's question-writing conversation for one chunk."""
    text = f"{title}\n{chunk_text}" if title and not chunk_text.startswith(title) else chunk_text
    shots = "\n".join(f"{i}. {q}" for i, q in enumerate(_SHOT_QUESTIONS[: max(1, min(n, 3))], start=1))
    return [
        {"role": "system", "content": QUESTION_SYSTEM},
        {"role": "user", "content": _question_request(_SHOT_TEXT, max(1, min(n, 3)))},
        {"role": "assistant", "content": shots},
        {"role": "user", "content": _question_request(text, n)},
    ]


def shown_text(doc: ContextDoc) -> str:
    """A document as the model sees it: title line, then text. Quotes are checked against this, title included."""
    return f"{doc.title}\n{doc.text}" if doc.title and not doc.text.startswith(doc.title) else doc.text


def render_documents(docs: Sequence[ContextDoc]) -> str:
    """Documents as the RAFT paper shows them: each inside <DOCUMENT> tags, title on the first line."""
    return "\n".join(f"<DOCUMENT>{shown_text(d)}</DOCUMENT>" for d in docs)


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


def student_user_prompt(question: str, docs: Sequence[ContextDoc]) -> str:
    return f"{render_documents(docs)}\n\nQuestion: {question}"


def student_messages(example: RaftExample, system_prompt: str | None = STUDENT_SYSTEM) -> list[Message]:
    """The conversation a student is trained on / evaluated with (without the assistant turn)."""
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": student_user_prompt(example.question, example.documents)})
    return messages
