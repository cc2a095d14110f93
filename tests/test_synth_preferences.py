"""Judging a student's answer for preference pairs (`ragtune.synth.preferences`): no answer, a wrong one, one that
cites a distractor, and the built distractor citation."""

from __future__ import annotations

import random

from conftest import raft_example

from ragtune.synth.preferences import answer_f1, distractor_citation, judge


def test_preference_judge():
    e = raft_example()
    assert answer_f1("in 1889", "1889") > 0.5 and answer_f1("1859", "1889") == 0
    assert judge("no tag", e) == "no_answer"
    assert judge("##begin_quote##It was completed in 1859.##end_quote##\n<ANSWER>: 1859", e) == "wrong_answer"
    assert (
        judge("##begin_quote##Big Ben is a clock tower in London.##end_quote##\n<ANSWER>: 1889", e)
        == "cites_distractor"
    )
    assert judge(e.cot_answer, e) is None
    built = distractor_citation(e, random.Random(0))
    assert built and judge(built, e) == "cites_distractor"
