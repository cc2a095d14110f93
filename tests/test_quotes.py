"""One quote-marker reader (`ragtune.prompts.quoted_spans`) and the two rules that judge a quoted span, kept apart
on purpose: evaluation is lenient (case, whitespace, end punctuation), synthesis strict (verbatim after cleaning)."""

from __future__ import annotations

from ragtune import metrics
from ragtune.prompts import BEGIN_QUOTE, END_QUOTE, quoted_spans
from ragtune.synth.validate import clean_quotes, quote_verbatim

DOC = "The Eiffel Tower was completed in 1889. It is in Paris."


def _quoted(*spans: str) -> str:
    return " then ".join(f"{BEGIN_QUOTE}{s}{END_QUOTE}" for s in spans) + " <ANSWER>: 1889"


def test_both_stages_read_the_same_spans():
    text = _quoted(" the eiffel tower was completed in 1889, ", "", '"It is in Paris."')
    assert quoted_spans(text) == [" the eiffel tower was completed in 1889, ", "", '"It is in Paris."']
    assert metrics.extract_quotes(text) == ["the eiffel tower was completed in 1889,", '"It is in Paris."']
    assert clean_quotes(text) == ["the eiffel tower was completed in 1889,", "", "It is in Paris."]


def test_evaluation_is_lenient_and_synthesis_strict():
    lowered = "the eiffel tower was completed in 1889,"
    assert metrics.quote_in(lowered, [DOC])  # a student is not marked down for case or a trailing comma
    assert not quote_verbatim(lowered, [DOC])  # a training example must quote exactly
    exact = "The Eiffel Tower was completed in 1889."
    assert metrics.quote_in(exact, [DOC]) and quote_verbatim(exact, [DOC])
    assert not metrics.quote_in("completed in 1890", [DOC]) and not quote_verbatim("completed in 1890", [DOC])
    assert not quote_verbatim("", [DOC]) and not metrics.quote_in("", [DOC])
