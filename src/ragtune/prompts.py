"""Every prompt text a generator is shown at training, evaluation and serving time, written once.

One module so that the layout a student is trained on (RAFT synthesis, SFT rows, RA-DIT rows, LSR scoring) is the
layout it is evaluated and served with: a wording changed here changes everywhere at once. The teacher's few-shot
prompts stay with the synthesis stage (`ragtune.synth.prompts`), the only stage that asks a teacher.

- the RAFT vocabulary: quote markers and the answer tag;
- the title rule: a document is shown (and embedded, and scored) as its title on a first line, then its text;
- the RAFT student prompt: `<DOCUMENT>` blocks, then the question, with the chain-of-thought system prompt;
- the evaluation / serving styles: "short" (one worked example, a short answer) and "cot" (the RAFT student prompt);
- RA-DIT's "Background:" prompt (LM-ft rows and the LM-supervised retrieval scores).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Protocol

from ragtune.llm.base import Message

BEGIN_QUOTE = "##begin_quote##"
END_QUOTE = "##end_quote##"
ANSWER_TAG = "<ANSWER>:"
QUOTE_RE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)


def quoted_spans(text: str) -> list[str]:
    """The raw spans between the quote markers, in order, as written.

    Two rules then judge a span, on purpose, and only these two: evaluation credits a quote found up to case,
    whitespace and end punctuation (`ragtune.metrics.quote_in`: a student is not marked down for trimming a
    comma); synthesis keeps a training example only when its cleaned quote is verbatim in the oracle
    (`ragtune.synth.validate.quote_verbatim`: a student learns to copy exactly what it is shown).
    """
    return QUOTE_RE.findall(text)


class Shown(Protocol):
    """Anything shown to a model as a document: a chunk, a hit, a RAFT context document, an evaluation document."""

    @property
    def title(self) -> str: ...

    @property
    def text(self) -> str: ...


# ---------------------------------------------------------------------------------------------------------------------
# The title rule


def with_title(title: str, text: str) -> str:
    """Title on a first line, then the text; a text that already starts with its title is not prefixed twice.

    A chunk cut from the middle of a document often does not name its subject, and HotpotQA's bridge questions need
    the entity's name: the title supplies it (DPR and most retrieval benchmarks index "title + passage" for this
    reason). Quotes are checked against this text, title included.
    """
    return f"{title}\n{text}" if title and not text.startswith(title) else text


def shown_text(doc: Shown) -> str:
    """A document as the model sees it: `with_title(doc.title, doc.text)`."""
    return with_title(doc.title, doc.text)


def render_document(doc: Shown) -> str:
    """One RAFT document block: `<DOCUMENT>title\\ntext</DOCUMENT>`."""
    return f"<DOCUMENT>{shown_text(doc)}</DOCUMENT>"


def render_documents(docs: Sequence[Shown]) -> str:
    """Documents as the RAFT paper shows them: each inside <DOCUMENT> tags, title on the first line, one per line."""
    return "\n".join(render_document(d) for d in docs)


# ---------------------------------------------------------------------------------------------------------------------
# The RAFT student prompt (training rows, `--prompt cot` evaluation, serving a RAFT-tuned model)

STUDENT_SYSTEM = (
    "You are a helpful assistant that answers questions from the documents provided. Reason step by step, quote "
    f"the supporting text between {BEGIN_QUOTE} and {END_QUOTE}, and end with {ANSWER_TAG} followed by the answer."
)


def student_user_prompt(question: str, docs: Sequence[Shown]) -> str:
    """The student's user turn: the document blocks, a blank line, then "Question: ..."."""
    return f"{render_documents(docs)}\n\nQuestion: {question}"


def student_conversation(question: str, docs: Sequence[Shown], system_prompt: str | None = STUDENT_SYSTEM
                         ) -> list[Message]:
    """The conversation a student is trained on / evaluated with (without the assistant turn)."""
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": student_user_prompt(question, docs)})
    return messages


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and serving: the short style and the chain-of-thought style
#
# A tuned model is compared with the base model's best of the two styles, which is why both exist: a small base model
# often does better with the short prompt, a RAFT-tuned one with the CoT prompt it learned.

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

# The chain-of-thought style is the RAFT student prompt above, so a tuned model is evaluated on exactly the layout
# it learned.
COT_CLOSED_BOOK_SYSTEM = (
    f"You are a helpful assistant. Reason step by step, then end with {ANSWER_TAG} followed by a short answer."
)
COT_ABSTAIN = f' If the documents do not contain the answer, end with "{ANSWER_TAG} unanswerable".'


def build_user_prompt(
    question: str, docs: Sequence[Shown], style: PromptStyle = "short", allow_unanswerable: bool = False
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
    return STUDENT_SYSTEM + (COT_ABSTAIN if allow_unanswerable else "")


def build_messages(
    question: str,
    docs: Sequence[Shown],
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


# ---------------------------------------------------------------------------------------------------------------------
# RA-DIT (Lin et al. 2023): each retrieved chunk is its own "Background:" instance

RADIT_SYSTEM = "You are a helpful assistant. Answer the question using the background text when it helps."


def background_turn(background: str, request: str) -> str:
    """RA-DIT's user turn: "Background: <chunk>", a blank line, then the request."""
    return f"Background: {background}\n\n{request}"


def radit_user_prompt(question: str, background: str) -> str:
    """The LM-ft row's user turn for one retrieved chunk (`background`, already `with_title`)."""
    return background_turn(background, f"Question: {question}")
