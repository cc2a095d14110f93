"""Teacher prompts per teacher size: few-shot (question, answer) prompts for small local models, the instruct
prompts of `prompts.py` for strong ones.

A 135M teacher asked for "questions the passage answers" invents facts and writes non-questions; asked for a quoted
chain of thought it almost never copies a sentence exactly. What it does well is imitate: shown three worked examples
of "a sentence of the text -> one question that sentence answers -> a few-word answer", it writes one question about
the sentence it is pointed at. So the few-shot style asks one question per *focus sentence* (spread over the chunk,
which also keeps a chunk's questions apart), takes only (question, answer) from the teacher, and leaves the quoting
to `grounding.py`. `auto` picks few-shot for local models and instruct for `openai:` teachers.
"""

from __future__ import annotations

import re
from typing import Literal

from ragtune.llm.base import Message
from ragtune.synth.grounding import Sentence, split_sentences
from ragtune.synth.validate import normalize_ws

PromptStyle = Literal["fewshot", "instruct", "auto"]
STYLES = ("fewshot", "instruct", "auto")

FEWSHOT_SYSTEM = (
    "You write quiz questions about a text. Each question asks for one fact that the given sentence states, and "
    "names what it is about. The answer is a few words copied from the sentence."
)

# (title, text, focus sentence, question, answer): the answer is always a short span of the focus sentence, and the
# question names its subject, so the student never sees "What is the title of the work?"
SHOTS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "Eiffel Tower",
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889 as the entrance "
        "arch to the World's Fair. It is 330 metres tall.",
        "It was completed in 1889 as the entrance arch to the World's Fair.",
        "In which year was the Eiffel Tower completed?",
        "1889",
    ),
    (
        "Marie Curie",
        "Marie Curie was a Polish-born physicist and chemist. She was the first woman to win a Nobel Prize. In 1911 "
        "she won the Nobel Prize in Chemistry for the discovery of polonium and radium.",
        "In 1911 she won the Nobel Prize in Chemistry for the discovery of polonium and radium.",
        "Which two elements did Marie Curie discover?",
        "polonium and radium",
    ),
    (
        "The Hobbit",
        "The Hobbit is a children's fantasy novel by J. R. R. Tolkien. It was published in 1937 by George Allen & "
        "Unwin. The book follows the hobbit Bilbo Baggins on a quest for treasure.",
        "The Hobbit is a children's fantasy novel by J. R. R. Tolkien.",
        "Who wrote the novel The Hobbit?",
        "J. R. R. Tolkien",
    ),
)

_Q_LINE = re.compile(r"(?im)^\s*(?:\d+[.)]\s*)?(?:question|q)\s*\d*\s*[:.)-]\s*(.+)$")
_A_LINE = re.compile(r"(?im)^\s*(?:answer|a)\s*\d*\s*[:.)-]\s*(.+)$")


def resolve_style(style: str, teacher_name: str) -> Literal["fewshot", "instruct"]:
    """`auto`: few-shot for a local teacher, instruct for an `openai:` one (a hosted model follows instructions)."""
    if style not in STYLES:
        raise ValueError(f"prompt style must be one of {', '.join(STYLES)}, got {style!r}")
    if style == "auto":
        return "instruct" if teacher_name.startswith("openai:") else "fewshot"
    return style  # type: ignore[return-value]


def _request(title: str, text: str, sentence: str) -> str:
    head = f"{title}. " if title and not text.startswith(title) else ""
    return (
        f"Text: {head}{normalize_ws(text)}\nSentence: {normalize_ws(sentence)}\n"
        "Write one question that the sentence answers, then its short answer."
    )


def qa_messages(chunk_text: str, sentence: str, title: str = "") -> list[Message]:
    """The few-shot conversation asking for one (question, answer) about `sentence` of the chunk."""
    messages: list[Message] = [{"role": "system", "content": FEWSHOT_SYSTEM}]
    for shot_title, text, focus, question, answer in SHOTS:
        messages.append({"role": "user", "content": _request(shot_title, text, focus)})
        messages.append({"role": "assistant", "content": f"Question: {question}\nAnswer: {answer}"})
    messages.append({"role": "user", "content": _request(title, chunk_text, sentence)})
    return messages


def parse_qa(text: str) -> tuple[str, str] | None:
    """(question, answer) from "Question: ...\\nAnswer: ..." output, or None when either is missing."""
    q = _Q_LINE.search(text)
    a = _A_LINE.search(text[q.end() :] if q else text)
    if not q or not a:
        return None
    question = normalize_ws(q.group(1)).strip(" \"'")
    if "?" in question:
        question = question[: question.index("?") + 1]
    answer = normalize_ws(a.group(1)).strip(" \"'")
    return (question, answer) if question and answer else None


def focus_sentences(chunk_text: str, n: int, min_words: int = 6) -> list[Sentence]:
    """n sentences to ask about, spread evenly over the chunk (the first one always), longer ones preferred: one
    question each keeps a chunk's questions from repeating each other."""
    sentences = split_sentences(chunk_text)
    usable = [s for s in sentences if len(s.text.split()) >= min_words] or sentences
    if len(usable) <= n:
        return usable
    step = len(usable) / n
    return [usable[int(i * step)] for i in range(n)]
