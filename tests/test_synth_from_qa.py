"""RAFT examples from labelled QA sets (`ragtune synth from-qa`): evidence quotes and distractors on the real
HotpotQA, SQuAD and NQ files, the distractor range, splits and resume, generic JSONL, and a teacher's answers."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import HOTPOT_SHARED, NQ_SHARED, SQUAD_SHARED, needs_shared

from ragtune.datasets.base import sentence_at
from ragtune.splits import split_of
from ragtune.synth.from_qa import FromQAConfig, evidence_cot, synthesize_from_qa
from ragtune.synth.store import read_raft
from ragtune.synth.validate import check_cot, normalize_ws


def test_hotpotqa_evidence(hotpot_raft):
    ws, summary = hotpot_raft
    examples = read_raft(ws / "synth" / "raft.jsonl")
    raw = {r["_id"]: r for r in json.loads(HOTPOT_SHARED.read_text())}
    assert len(examples) == len(raw) == summary.examples_total
    assert summary.counts["answers_valid"] == len(examples)
    kept = 0
    for e in examples:
        r = raw[e.id]
        assert e.split == split_of(e.id)
        assert len(e.documents) == 5  # 2 gold + 3 distractors, or 5 distractors without the oracles
        titles = [d.title for d in e.documents]
        assert len(set(titles)) == 5
        gold = {t for t, _ in r["supporting_facts"]}
        own = {t for t, _ in r["context"]}
        if len(own - gold) >= 5:
            assert set(titles) <= own, "distractors come from the example's own context"
        if e.oracle_kept:
            kept += 1
            assert {d.title for d in e.documents if d.is_oracle} == gold
        else:
            assert not gold & set(titles) and {d.title for d in e.dropped_oracles} == gold
        assert e.cot_answer.endswith(f"<ANSWER>: {r['answer']}")
        oracle_texts = [normalize_ws(d.text) for d in [*e.documents, *e.dropped_oracles] if d.is_oracle]
        assert e.quotes and all(any(q in t for t in oracle_texts) for q in e.quotes)
    n = len(examples)
    assert abs(kept / n - 0.8) < 4 * (0.16 / n) ** 0.5


@needs_shared
def test_from_qa_distractor_range(tmp_path):
    """--distractors-max: each example shows its own k in the range, reproducibly, so the student sees every K."""
    from pydantic import ValidationError

    config = FromQAConfig(split="all", limit=80, seed=4, distractors=0, distractors_max=6, p_oracle=1.0)
    synthesize_from_qa("hotpotqa", HOTPOT_SHARED, tmp_path / "a", config)
    ks = [sum(not d.is_oracle for d in e.documents) for e in read_raft(tmp_path / "a" / "synth" / "raft.jsonl")]
    assert len(ks) == 80 and min(ks) >= 0 and max(ks) <= 6
    assert len(set(ks)) >= 5, f"k should spread over 0..6, got {Counter(ks)}"
    synthesize_from_qa("hotpotqa", HOTPOT_SHARED, tmp_path / "b", config)
    again = [sum(not d.is_oracle for d in e.documents) for e in read_raft(tmp_path / "b" / "synth" / "raft.jsonl")]
    assert again == ks
    with pytest.raises(ValidationError, match=r"--distractors-max \(2\) must be >= --distractors \(3\)"):
        FromQAConfig(distractors=3, distractors_max=2)


@needs_shared
def test_from_qa_splits_and_resume(tmp_path):
    first = synthesize_from_qa("hotpotqa", HOTPOT_SHARED, tmp_path, FromQAConfig(limit=40, seed=2))
    assert all(e.split == "train" for e in read_raft(tmp_path / "synth" / "raft.jsonl"))
    again = synthesize_from_qa("hotpotqa", HOTPOT_SHARED, tmp_path, FromQAConfig(limit=40, seed=2))
    assert again.groups_written == 0 and again.groups_done_before == first.groups_written
    from ragtune.synth.raft import SynthConfigError

    with pytest.raises(SynthConfigError, match="different settings"):
        synthesize_from_qa("hotpotqa", HOTPOT_SHARED, tmp_path, FromQAConfig(limit=40, seed=3))


@needs_shared
def test_squad_and_nq_evidence(tmp_path):
    s = synthesize_from_qa("squad", SQUAD_SHARED, tmp_path / "s", FromQAConfig(split="all"))
    squad = read_raft(tmp_path / "s" / "synth" / "raft.jsonl")
    assert len(squad) == s.examples_total > 50
    for e in squad:
        assert e.answer in " ".join(e.quotes) or e.answer.lower() in " ".join(e.quotes).lower()
        assert len(e.documents) == 4
    synthesize_from_qa("nq", NQ_SHARED, tmp_path / "n", FromQAConfig(split="all", limit=200, distractors=2))
    nq = read_raft(tmp_path / "n" / "synth" / "raft.jsonl")
    assert len(nq) > 150
    assert all(len(e.documents) == 3 and len({d.doc_id for d in e.documents}) == 3 for e in nq)


def test_generic_jsonl(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [
        {
            "id": f"q{i}",
            "question": f"What colour is item {i}?",
            "answer": f"colour{i}",
            "oracle": f"Item {i} is painted colour{i}. It was made in a factory.",
            "distractors": [f"Item {i + 100} is big.", f"Item {i + 200} is small."],
        }
        for i in range(12)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    synthesize_from_qa("jsonl", path, tmp_path / "w", FromQAConfig(split="all", distractors=1))
    ex = read_raft(tmp_path / "w" / "synth" / "raft.jsonl")
    assert len(ex) == 12
    assert ex[0].quotes == ["Item 0 is painted colour0."]


def test_evidence_cot_and_sentence_at():
    cot = evidence_cot("q?", "Paris", [("France", "Paris is the capital of France.")])
    assert check_cot(cot, ["Paris is the capital of France. It is big."]).valid
    text = "First sentence here. The answer is 42. Last one."
    assert sentence_at(text, text.index("42")) == "The answer is 42."


@needs_shared
def test_from_qa_with_a_teacher(tmp_path):
    from ragtune.synth.fake_teacher import FakeTeacher

    class Echo(FakeTeacher):
        """Quotes the best sentence, then gives the answer the prompt hints at: valid when the quote is gold."""

        def _one(self, messages):
            text = super()._one(messages)
            hint = messages[-1]["content"].split("The correct answer is: ", 1)[-1].split(". Explain", 1)[0]
            return text.rsplit("<ANSWER>:", 1)[0] + f"<ANSWER>: {hint}"

    config = FromQAConfig(cot="teacher", limit=12, split="all", teacher_context="oracle", concurrency=4)
    summary = synthesize_from_qa("hotpotqa", HOTPOT_SHARED, tmp_path, config, teacher=Echo())
    examples = read_raft(tmp_path / "synth" / "raft.jsonl")
    assert summary.counts["records"] == 12 and len(examples) == summary.counts.get("answers_valid", 0) > 0
    for e in examples:
        assert e.cot_answer.endswith(f"<ANSWER>: {e.answer}") and e.teacher == "fake"
    wrong = synthesize_from_qa("hotpotqa", HOTPOT_SHARED, tmp_path / "w", config, teacher=FakeTeacher())
    assert wrong.counts.get("dropped: answer disagrees with the gold answer", 0) > 0
