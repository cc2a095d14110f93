"""Fast checks of the synthesis pieces that need no model: validation, splits, distractors and P/k statistics,
resume files, from-qa on the real labelled sets, pairs, preference judging and exports."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from ragtune.datasets.base import sentence_at
from ragtune.records import ContextDoc
from ragtune.splits import split_of
from ragtune.synth.distractors import DistractorPool, Exclusion, assemble, pick_distractors
from ragtune.synth.export import ExportError, export
from ragtune.synth.from_qa import FromQAConfig, evidence_cot, synthesize_from_qa
from ragtune.synth.pairs import PairsConfig, build_pairs
from ragtune.synth.preferences import answer_f1, distractor_citation, judge
from ragtune.synth.records import Group, PreferenceExample, RaftExample
from ragtune.synth.store import GroupFile, read_pairs, read_raft
from ragtune.synth.validate import check_cot, normalize_ws, parse_questions, question_problem

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HOTPOT = DATA / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"
SQUAD = DATA / "squad_v2" / "official_dev-v2.0_first_article.json"
NQ = DATA / "nq_open_oracle" / "nq-open-oracle.jsonl.gz"

pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} is absent (only CI has ../shared)")

ORACLE = "The Eiffel Tower was completed in 1889.\nIt is 330 metres   tall and stands in Paris."


# ---- validation ----------------------------------------------------------------------------------------------------


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


def test_split_is_deterministic_and_one_in_five():
    ids = [r["_id"] for r in json.loads(HOTPOT.read_text())]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    share = splits.count("eval") / len(ids)
    assert 0.15 < share < 0.25
    import hashlib

    for i, s in zip(ids, splits, strict=True):
        assert (s == "eval") == (int(hashlib.sha1(i.encode()).hexdigest(), 16) % 5 == 0)


# ---- distractors: P and k over many examples ---------------------------------------------------------------------


def _pool(n: int) -> list[ContextDoc]:
    return [ContextDoc(doc_id=f"d{i}", text=f"document number {i} talks about topic {i % 37}") for i in range(n)]


@pytest.mark.parametrize("p,k", [(0.8, 3), (0.4, 1), (1.0, 4), (0.0, 2)])
def test_p_and_k_statistics(p, k):
    docs = _pool(60)
    # a duplicate of the oracle's text under another id, and a chunk overlapping the oracle: never distractors
    docs.append(ContextDoc(doc_id="copy", text=docs[0].text))
    docs.append(ContextDoc(doc_id="overlap", text="the oracle's neighbour chunk"))
    spans = {"overlap": ("parent", 50, 150)}
    pool = DistractorPool(docs, spans)
    oracle = docs[0].model_copy(update={"is_oracle": True})
    n, kept = 4000, 0
    for i in range(n):
        rng = random.Random(f"7:{i}")
        exclude = Exclusion([oracle], [("parent", 100, 200)])
        distractors = pick_distractors(rng, k + 1, exclude, pool)
        shown, oracle_kept = assemble(rng, [oracle], distractors, k, p)
        ids = [d.doc_id for d in shown]
        assert len(ids) == len(set(ids)), "a distractor twice"
        assert "copy" not in ids and "overlap" not in ids
        n_oracle = sum(d.is_oracle for d in shown)
        distractor_ids = [d.doc_id for d in shown if not d.is_oracle]
        assert oracle.doc_id not in distractor_ids
        if oracle_kept:
            kept += 1
            assert n_oracle == 1 and len(distractor_ids) == k
        else:
            assert n_oracle == 0 and len(distractor_ids) == k + 1
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept / n - p) <= 4 * sigma + 1e-9


def test_oracle_position_is_shuffled():
    pool = DistractorPool(_pool(30))
    oracle = ContextDoc(doc_id="o", text="the oracle", is_oracle=True)
    positions = Counter()
    for i in range(2000):
        rng = random.Random(i)
        shown, kept = assemble(rng, [oracle], pick_distractors(rng, 4, Exclusion([oracle]), pool), 3, 1.0)
        positions[[d.doc_id for d in shown].index("o")] += 1
    assert set(positions) == {0, 1, 2, 3}
    assert min(positions.values()) > 400


# ---- resume file ---------------------------------------------------------------------------------------------------


def test_group_file_drops_torn_line(tmp_path):
    path = tmp_path / "g.jsonl"
    with GroupFile(path) as f:
        f.append(Group(group_id="a", examples=[{"x": 1}], counts={"examples": 1}))
        f.append(Group(group_id="b", examples=[], counts={"examples": 0}))
    with open(path, "a") as f:
        f.write('{"group_id": "c", "exam')  # a kill -9 in the middle of a write
    g = GroupFile(path)
    assert g.done == {"a", "b"} and g.dropped_torn_line and g.examples == 1
    g.append(Group(group_id="c", examples=[{"x": 2}]))
    g.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["group_id"] for x in lines] == ["a", "b", "c"]


# ---- from-qa on the real data sets -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hotpot_raft(tmp_path_factory):
    ws = tmp_path_factory.mktemp("hotpot")
    summary = synthesize_from_qa("hotpotqa", HOTPOT, ws, FromQAConfig(split="all", seed=1))
    return ws, summary


def test_hotpotqa_evidence(hotpot_raft):
    ws, summary = hotpot_raft
    examples = read_raft(ws / "synth" / "raft.jsonl")
    raw = {r["_id"]: r for r in json.loads(HOTPOT.read_text())}
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


def test_from_qa_distractor_range(tmp_path):
    """--distractors-max: each example shows its own k in the range, reproducibly, so the student sees every K."""
    from ragtune.synth.raft import SynthConfigError

    config = FromQAConfig(split="all", limit=80, seed=4, distractors=0, distractors_max=6, p_oracle=1.0)
    synthesize_from_qa("hotpotqa", HOTPOT, tmp_path / "a", config)
    ks = [sum(not d.is_oracle for d in e.documents) for e in read_raft(tmp_path / "a" / "synth" / "raft.jsonl")]
    assert len(ks) == 80 and min(ks) >= 0 and max(ks) <= 6
    assert len(set(ks)) >= 5, f"k should spread over 0..6, got {Counter(ks)}"
    synthesize_from_qa("hotpotqa", HOTPOT, tmp_path / "b", config)
    again = [sum(not d.is_oracle for d in e.documents) for e in read_raft(tmp_path / "b" / "synth" / "raft.jsonl")]
    assert again == ks
    with pytest.raises(SynthConfigError, match="distractors-max"):
        FromQAConfig(distractors=3, distractors_max=2).check()


def test_from_qa_splits_and_resume(tmp_path):
    first = synthesize_from_qa("hotpotqa", HOTPOT, tmp_path, FromQAConfig(limit=40, seed=2))
    assert all(e.split == "train" for e in read_raft(tmp_path / "synth" / "raft.jsonl"))
    again = synthesize_from_qa("hotpotqa", HOTPOT, tmp_path, FromQAConfig(limit=40, seed=2))
    assert again.groups_written == 0 and again.groups_done_before == first.groups_written
    from ragtune.synth.raft import SynthConfigError

    with pytest.raises(SynthConfigError, match="different settings"):
        synthesize_from_qa("hotpotqa", HOTPOT, tmp_path, FromQAConfig(limit=40, seed=3))


def test_squad_and_nq_evidence(tmp_path):
    s = synthesize_from_qa("squad", SQUAD, tmp_path / "s", FromQAConfig(split="all"))
    squad = read_raft(tmp_path / "s" / "synth" / "raft.jsonl")
    assert len(squad) == s.examples_total > 50
    for e in squad:
        assert e.answer in " ".join(e.quotes) or e.answer.lower() in " ".join(e.quotes).lower()
        assert len(e.documents) == 4
    synthesize_from_qa("nq", NQ, tmp_path / "n", FromQAConfig(split="all", limit=200, distractors=2))
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


# ---- pairs, preferences, export ------------------------------------------------------------------------------------


def test_pairs_without_index(hotpot_raft, tmp_path):
    ws, _ = hotpot_raft
    summary = build_pairs(ws, PairsConfig(negatives=3, mine=False), out=tmp_path / "pairs.jsonl")
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    assert len(pairs) == summary.examples_total > 500
    for p in pairs:
        assert p.positive and p.positive not in p.negatives and p.positive_id not in p.negative_ids
        assert len(set(p.negative_ids)) == len(p.negative_ids)


def _example() -> RaftExample:
    docs = [
        ContextDoc(doc_id="o", text=ORACLE, is_oracle=True),
        ContextDoc(doc_id="d", text="Big Ben is a clock tower in London. It was completed in 1859."),
    ]
    return RaftExample(
        id="e",
        group_id="g",
        question="When was the Eiffel Tower completed?",
        documents=docs,
        oracle_ids=["o"],
        oracle_kept=True,
        answer="1889",
        cot_answer="##begin_quote##The Eiffel Tower was completed in 1889.##end_quote##\n<ANSWER>: 1889",
    )


def test_preference_judge():
    e = _example()
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


def test_exports(hotpot_raft, tmp_path):
    ws, _ = hotpot_raft
    card = export(ws, "openai-chat", tmp_path / "chat.jsonl", tokenizer="words")
    lines = [json.loads(x) for x in (tmp_path / "chat.jsonl").read_text().splitlines()]
    assert len(lines) == card["examples"] == sum(e.split == "train" for e in read_raft(ws / "synth" / "raft.jsonl"))
    assert [m["role"] for m in lines[0]["messages"]] == ["system", "user", "assistant"]
    assert "<DOCUMENT>" in lines[0]["messages"][1]["content"]
    assert card["quote_validity_rate"] == 1.0 and card["k"] == 3
    assert 0.7 < card["p_oracle_observed"] < 0.9
    assert card["quotes_in_oracle_exported"] == card["quotes_exported"]
    assert sum(card["token_length_histogram"].values()) == card["examples"]
    assert (tmp_path / "chat.card.md").read_text().startswith("# Dataset card")
    for fmt, name in [("sharegpt", "sg.jsonl"), ("completion", "c.jsonl")]:
        export(ws, fmt, tmp_path / name, system_prompt=None, tokenizer="words")
        row = json.loads((tmp_path / name).read_text().splitlines()[0])
        assert ("conversations" in row) if fmt == "sharegpt" else ({"prompt", "completion"} <= set(row))
    export(ws, "hf", tmp_path / "hf", split="all", tokenizer="words")
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "hf" / "data" / "eval.parquet").num_rows > 100
    assert "configs:" in (tmp_path / "hf" / "README.md").read_text()


def test_export_needs_ten_examples(tmp_path):
    synthesize_from_qa("hotpotqa", HOTPOT, tmp_path, FromQAConfig(limit=5))
    with pytest.raises(ExportError, match="at least 10"):
        export(tmp_path, "openai-chat", tmp_path / "x.jsonl", tokenizer="words")


def test_dpo_export(tmp_path):
    e = _example()
    with GroupFile(tmp_path / "synth" / "preferences.jsonl") as f:
        rows = [
            PreferenceExample(
                id=f"p{i}",
                example_id="e",
                messages=[{"role": "user", "content": f"q{i}"}],
                chosen=e.cot_answer,
                rejected="<ANSWER>: 1859",
                reason="wrong_answer",
                split="train",
            ).model_dump()
            for i in range(12)
        ]
        f.append(Group(group_id="g", examples=rows))
    export(tmp_path, "openai-dpo", tmp_path / "dpo.jsonl", tokenizer="words")
    row = json.loads((tmp_path / "dpo.jsonl").read_text().splitlines()[0])
    assert set(row) == {"input", "preferred_output", "non_preferred_output"}
    assert row["input"]["messages"][-1]["role"] == "user"
    assert row["preferred_output"][0]["role"] == "assistant"
    bad = tmp_path / "bad"
    with GroupFile(bad / "synth" / "preferences.jsonl") as f:
        rows[3]["messages"] = [{"role": "robot", "content": "x"}]
        f.append(Group(group_id="g", examples=rows))
    with pytest.raises(ExportError, match="role"):
        export(bad, "openai-dpo", bad / "dpo.jsonl", tokenizer="words")


def test_from_qa_with_a_teacher(tmp_path):
    from ragtune.synth.fake_teacher import FakeTeacher

    class Echo(FakeTeacher):
        """Quotes the best sentence, then gives the answer the prompt hints at: valid when the quote is gold."""

        def _one(self, messages):
            text = super()._one(messages)
            hint = messages[-1]["content"].split("The correct answer is: ", 1)[-1].split(". Explain", 1)[0]
            return text.rsplit("<ANSWER>:", 1)[0] + f"<ANSWER>: {hint}"

    config = FromQAConfig(cot="teacher", limit=12, split="all", teacher_context="oracle", concurrency=4)
    summary = synthesize_from_qa("hotpotqa", HOTPOT, tmp_path, config, teacher=Echo())
    examples = read_raft(tmp_path / "synth" / "raft.jsonl")
    assert summary.counts["records"] == 12 and len(examples) == summary.counts.get("answers_valid", 0) > 0
    for e in examples:
        assert e.cot_answer.endswith(f"<ANSWER>: {e.answer}") and e.teacher == "fake"
    wrong = synthesize_from_qa("hotpotqa", HOTPOT, tmp_path / "w", config, teacher=FakeTeacher())
    assert wrong.counts.get("dropped: answer disagrees with the gold answer", 0) > 0
