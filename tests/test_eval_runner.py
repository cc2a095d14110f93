"""The runner with a scripted generator: settings, distractor draws, length-sorted batches, resume, sweeps."""

from __future__ import annotations

import json

import pytest

from ragtune.datasets import QAItem
from ragtune.eval.runner import (
    EvalSettings,
    evaluate,
    evaluate_sweep,
    length_sorted_batches,
    oracle_documents,
    parse_distractors,
    sweep_summary,
)
from ragtune.llm.base import LLM, Generation, GenerationConfig
from ragtune.prompts import build_messages, render_documents
from ragtune.records import ContextDoc, Hit


class ScriptedLLM(LLM):
    """Answers from a {question: text} script and remembers every batch it was given."""

    name = "scripted"

    def __init__(self, script: dict[str, str]):
        self.script = script
        self.batches: list[list[int]] = []

    def generate(self, conversations, config: GenerationConfig | None = None, batch_size: int = 8):
        self.batches.append([len(c[-1]["content"]) for c in conversations])
        out = []
        for conv in conversations:
            user = conv[-1]["content"]
            text = next((a for q, a in self.script.items() if q in user), "I don't know")
            out.append(Generation(text=text, prompt_tokens=len(user.split()), completion_tokens=len(text.split())))
        return out

    def loglikelihood(self, requests, batch_size: int = 8):
        return [0.0 for _ in requests]


def _doc(name: str, words: int = 5) -> ContextDoc:
    return ContextDoc(doc_id=name, title=name, text=f"{name} " + " ".join(["filler"] * words))


def _items() -> list[QAItem]:
    return [
        QAItem(
            id="q1",
            question="Where is Paris?",
            answers=["France"],
            gold_docs=[_doc("gold1")],
            distractor_docs=[_doc(f"d1-{i}") for i in range(8)],
        ),
        QAItem(
            id="q2",
            question="Who wrote Hamlet?",
            answers=["Shakespeare", "William Shakespeare"],
            gold_docs=[_doc("gold2", 50)],
            distractor_docs=[_doc(f"d2-{i}") for i in range(2)],
        ),
        QAItem(id="q3", question="Capital of Atlantis?", answers=[], answerable=False, gold_docs=[_doc("gold3")]),
    ]


SCRIPT = {
    "Where is Paris?": "##begin_quote##gold1 filler##end_quote## so\n<ANSWER>: France",
    "Who wrote Hamlet?": "William Shakespeare wrote it.",
    "Capital of Atlantis?": "unanswerable",
}


def test_oracle_distractors_are_nested_and_seeded():
    item = _items()[0]
    shown = {k: oracle_documents(item, k, seed=0) for k in range(9)}
    for k in range(9):
        assert len(shown[k]) == 1 + k and "gold1" in {d.doc_id for d in shown[k]}
    for k in range(8):  # K distractors are a subset of K+1's: the curve changes one document at a time
        assert {d.doc_id for d in shown[k]} <= {d.doc_id for d in shown[k + 1]}
    assert [d.doc_id for d in oracle_documents(item, 4, seed=0)] == [d.doc_id for d in shown[4]]


def test_oracle_tops_up_from_the_pool():
    item = _items()[1]  # only two own distractors
    pool = [_doc(f"p{i}") for i in range(10)] + item.gold_docs
    shown = oracle_documents(item, 5, seed=0, pool=pool)
    assert len(shown) == 6
    assert len({d.text for d in shown}) == 6  # the gold document is never drawn again as a distractor


def test_length_sorted_batches():
    assert length_sorted_batches([5, 100, 7, 90, 6], 2) == [[1, 3], [2, 4], [0]]


def test_parse_distractors():
    assert parse_distractors("3") == [3]
    assert parse_distractors("0..9") == list(range(10))
    assert parse_distractors("4-2") == [2, 3, 4]
    assert parse_distractors("0,2, 1") == [0, 1, 2]
    with pytest.raises(ValueError):
        parse_distractors("many")


def test_prompts_render_raft_documents():
    docs = [ContextDoc(doc_id="1", title="Paris", text="The capital.")]
    assert render_documents(docs) == "<DOCUMENT>Paris\nThe capital.</DOCUMENT>"
    # a text that already starts with its title is not prefixed twice (the synthesis stage's rule)
    assert render_documents([_doc("a", 1)]) == "<DOCUMENT>a filler</DOCUMENT>"
    short = build_messages("Q?", docs, "short")
    assert short[0]["role"] == "system" and "<DOCUMENT>Paris\nThe capital.</DOCUMENT>" in short[-1]["content"]
    cot = build_messages("Q?", docs, "cot")
    assert "<ANSWER>:" in cot[0]["content"] and cot[-1]["content"].endswith("Question: Q?")
    closed = build_messages("Q?", [], "short")
    assert "<DOCUMENT>" not in closed[-1]["content"]


def test_evaluate_oracle_scores_and_files(tmp_path):
    llm = ScriptedLLM(SCRIPT)
    result = evaluate(_items(), llm, EvalSettings(setting="oracle", distractors=2, batch_size=2), tmp_path / "run")
    s = result.scores
    assert s["n"] == 3
    assert s["em"] == pytest.approx(2 / 3)  # France exact; "William Shakespeare wrote it" partial; abstention right
    assert s["unanswerable_accuracy"] == 1.0
    assert s["quote_precision"] == 1.0 and s["oracle_citation_rate"] == pytest.approx(1 / 3)
    assert [len(b) for b in llm.batches] == [2, 1]
    assert llm.batches[0][0] >= llm.batches[0][1] >= llm.batches[1][0]  # longest prompts first
    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["q1", "q2", "q3"]
    assert len(records[0]["shown"]) == 3 and records[0]["prediction"] == "France"
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["scores"]["f1"] == pytest.approx(s["f1"])


def test_unanswerable_instruction_only_when_needed():
    llm = ScriptedLLM(SCRIPT)
    evaluate(_items()[:2], llm, EvalSettings(setting="oracle"))
    seen = []
    llm.generate = lambda convs, config=None, batch_size=8: seen.extend(convs) or [Generation("x")] * len(convs)
    evaluate(_items(), llm, EvalSettings(setting="oracle"))
    assert all("unanswerable" in c[-1]["content"] for c in seen)


def test_resume_skips_finished_questions(tmp_path):
    llm = ScriptedLLM(SCRIPT)
    settings = EvalSettings(setting="closed-book", batch_size=1)
    evaluate(_items()[:2], llm, settings, tmp_path)
    calls = len(llm.batches)
    again = evaluate(_items(), llm, settings, tmp_path)  # one more question: only it is generated
    assert len(llm.batches) == calls + 1
    assert again.scores["n"] == 3 and again.extra["resumed"] == 2
    other = EvalSettings(setting="closed-book", batch_size=1, prompt="cot")  # a changed setting reruns everything
    evaluate(_items(), llm, other, tmp_path)
    assert len(llm.batches) == calls + 1 + 3


def test_sweep_gives_one_run_per_k(tmp_path):
    llm = ScriptedLLM(SCRIPT)
    results = evaluate_sweep(_items()[:2], llm, EvalSettings(setting="oracle"), [0, 1, 3], tmp_path)
    assert sorted(results) == [0, 1, 3]
    assert (tmp_path / "k3" / "predictions.jsonl").exists()
    summary = sweep_summary(results)
    assert set(summary["by_distractors"]) == {"0", "1", "3"} and summary["f1"] is not None


class FakeSearcher:
    def search(self, query, k=5, mode="hybrid"):
        texts = [("other", "unrelated text about nothing in particular"), ("gold1", _doc("gold1").text)]
        return [
            Hit(chunk_id=f"c{i}", doc_id=d, source="s", score=1.0, text=t, title=d)
            for i, (d, t) in enumerate(texts[:k])
        ]


def test_retrieved_setting_scores_retrieval():
    llm = ScriptedLLM(SCRIPT)
    result = evaluate(_items()[:1], llm, EvalSettings(setting="retrieved", k=2), searcher=FakeSearcher())
    assert result.scores["recall@2"] == 1.0
    assert result.scores["mrr"] == pytest.approx(0.5)
    assert result.records[0]["oracle_shown"] is True
