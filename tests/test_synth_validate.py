"""The checks every synthesized example passes (`ragtune.synth.validate`): the quoted chain of thought and its answer
tag, the questions parsed from a teacher's list, and questions that copy their chunk."""

from __future__ import annotations

import pytest
from conftest import ORACLE

from ragtune.synth.validate import check_cot, parse_questions, question_problem


def test_valid_cot_with_rewrapped_quote():
    text = (
        "The text says ##begin_quote## It is 330 metres tall\nand stands in Paris. ##end_quote## so.\n"
        "<ANSWER>: 330 metres\nextra chatter"
    )
    check = check_cot(text, [ORACLE])
    assert check.valid, check.reason
    assert check.answer == "330 metres"
    assert check.cot_answer.endswith("<ANSWER>: 330 metres")  # trailing chatter dropped
    assert check.quotes == ["It is 330 metres tall and stands in Paris."]


@pytest.mark.parametrize(
    "text,reason",
    [
        ("No tag at all ##begin_quote##It is 330 metres tall##end_quote##", "no <ANSWER>: tag"),
        ("##begin_quote##It is 330 metres tall##end_quote##\n<ANSWER>:   ", "empty answer"),
        ("Reasoning without quotes.\n<ANSWER>: 1889", "no quote"),
        ("##begin_quote##It is 400 metres tall##end_quote##\n<ANSWER>: 400", "quote not in oracle"),
        ("##begin_quote##It is 330 metres tall\n<ANSWER>: 330", "unbalanced quote markers"),
    ],
)
def test_invalid_cot(text, reason):
    check = check_cot(text, [ORACLE])
    assert not check.valid
    assert check.reason == reason


def test_parse_questions_and_copies():
    text = (
        "1. When was the tower completed?\n2) How tall is it?\n- Where does it stand?\nSure! Here you go:\n"
        "1. When was the tower completed?"
    )
    assert parse_questions(text, 5) == ["When was the tower completed?", "How tall is it?", "Where does it stand?"]
    assert parse_questions(text, 2) == ["When was the tower completed?", "How tall is it?"]
    chunk = "The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair in Paris."
    assert question_problem("The Eiffel Tower was completed in 1889 as the entrance arch?", chunk)
    assert question_problem(chunk, chunk)
    assert question_problem("When was it completed?", chunk) is None
    assert question_problem("Why?", chunk)
