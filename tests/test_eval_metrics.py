"""Metric values on hand-worked cases: SQuAD normalisation, aliases, empty and unanswerable answers, quotes, ranking."""

from __future__ import annotations

import math

import pytest

from ragtune import metrics as m


def test_normalization_drops_case_punctuation_articles_and_spaces():
    assert m.normalize_answer("The  Cat!") == "cat"
    assert m.normalize_answer("An apple, a pear.") == "apple pear"
    assert m.normalize_answer("  Theater  ") == "theater"  # "the" inside a word stays


def test_exact_match_ignores_articles_and_punctuation():
    assert m.exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert m.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0


def test_f1_by_hand():
    # pred [eiffel, tower, in, paris] vs gold [eiffel, tower]: P = 2/4, R = 2/2, F1 = 2/3
    assert m.f1_score("Eiffel tower in Paris", ["The Eiffel Tower"]) == pytest.approx(2 / 3)
    # repeated tokens count once per occurrence in both (Counter intersection): P = 1/3, R = 1 -> 0.5
    assert m.f1_score("yes yes yes", ["yes"]) == pytest.approx(0.5)


def test_best_over_several_gold_aliases():
    # vs "obama": P 1/2, R 1 -> 2/3; vs "president barack obama": P 1, R 2/3 -> 0.8; the max wins
    assert m.f1_score("Barack Obama", ["Obama", "President Barack Obama"]) == pytest.approx(0.8)
    assert m.exact_match("barack obama", ["Obama", "Barack Obama"]) == 1.0


def test_empty_prediction_scores_zero_on_answerable():
    assert m.exact_match("", ["Paris"]) == 0.0
    assert m.f1_score("", ["Paris"]) == 0.0
    assert m.f1_score("the", ["Paris"]) == 0.0  # only an article: empty after normalisation


def test_unanswerable_is_right_only_when_the_model_abstains():
    assert m.exact_match("unanswerable", [], answerable=False) == 1.0
    assert m.f1_score("The documents do not mention it.", [], answerable=False) == 1.0
    assert m.exact_match("", [], answerable=False) == 1.0  # the official SQuAD 2.0 convention
    assert m.exact_match("Paris", [], answerable=False) == 0.0
    assert m.f1_score("Paris", ["ignored"], answerable=False) == 0.0
    assert m.is_abstention("I don't know")
    assert not m.is_abstention("Paris")


def test_answer_is_taken_after_the_answer_tag():
    cot = "The text says ##begin_quote##Paris is the capital##end_quote##.\n<ANSWER>: Paris."
    assert m.extract_answer(cot) == "Paris."
    assert m.exact_match(m.extract_answer(cot), ["Paris"]) == 1.0
    assert m.extract_answer("<ANSWER>: first\nreasoning <ANSWER>: second") == "second"


def test_without_tag_the_first_line_and_sentence_is_the_answer():
    assert m.extract_answer("\n  Answer: Paris\nBecause it is.") == "Paris"
    assert m.extract_answer("The answer is Paris. It is big.") == "Paris."
    assert m.extract_answer("The U.S. Army was there. Then it left.") == "The U.S. Army was there."
    assert m.extract_answer("Answers vary") == "Answers vary"
    assert m.extract_answer("") == ""


def test_quotes_precision_and_oracle_citation():
    docs = ["Paris is the capital of France.", "Berlin is in Germany."]
    gen = (
        "##begin_quote##paris is the  capital of France##end_quote## and ##begin_quote##Lyon is big##end_quote##"
        "\n<ANSWER>: Paris"
    )
    assert m.extract_quotes(gen) == ["paris is the  capital of France", "Lyon is big"]
    stats = m.quote_stats(gen, docs, gold_docs=[docs[0]])
    assert stats == {"quotes": 2, "valid_quotes": 1, "cites_oracle": True}
    stats = m.quote_stats(gen, docs, gold_docs=[docs[1]])
    assert stats["cites_oracle"] is False
    scores = m.aggregate(
        [
            {"em": 1.0, "f1": 1.0, "abstained": False, "oracle_shown": True, **m.quote_stats(gen, docs, [docs[0]])},
            {
                "em": 0.0,
                "f1": 0.5,
                "abstained": False,
                "oracle_shown": True,
                "quotes": 0,
                "valid_quotes": 0,
                "cites_oracle": False,
            },
        ]
    )
    assert scores["quote_precision"] == pytest.approx(0.5)
    assert scores["oracle_citation_rate"] == pytest.approx(0.5)
    assert scores["em"] == pytest.approx(0.5) and scores["f1"] == pytest.approx(0.75)


def test_retrieval_metrics_by_hand():
    gold = ["a", "b"]
    assert m.recall_at_k(["a", "x", "b"], gold, 2) == pytest.approx(0.5)
    assert m.recall_at_k(["a", "a", "b"], gold, 2) == pytest.approx(1.0)  # chunks of one document count once
    assert m.mrr(["x", "a"], gold) == pytest.approx(0.5)
    assert m.mrr(["x", "y"], gold) == 0.0
    # DCG = 1/log2(3) + 1/log2(4); ideal = 1 + 1/log2(3)
    expected = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert m.ndcg_at_k(["x", "a", "b"], gold, 3) == pytest.approx(expected)
    assert m.ndcg_at_k(["a", "b"], gold, 2) == pytest.approx(1.0)


def test_aggregate_unanswerable_accuracy_and_speed():
    records = [
        {"em": 1.0, "f1": 1.0, "answerable": False, "abstained": True, "seconds": 1.0, "completion_tokens": 4},
        {"em": 0.0, "f1": 0.0, "answerable": False, "abstained": False, "seconds": 3.0, "completion_tokens": 6},
        {"em": 1.0, "f1": 1.0, "answerable": True, "abstained": False, "seconds": 2.0, "completion_tokens": 5},
    ]
    scores = m.aggregate(records, wall_seconds=6.0)
    assert scores["unanswerable_accuracy"] == pytest.approx(0.5)
    assert scores["answerable_em"] == pytest.approx(1.0)
    assert scores["questions_per_min"] == pytest.approx(30.0)
    assert scores["completion_tokens_per_s"] == pytest.approx(15 / 6)
    assert scores["latency_p50_s"] == pytest.approx(2.0)
    assert scores["quote_precision"] is None  # nobody quoted: not a precision of 0
