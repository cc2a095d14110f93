"""QA data-set readers (`ragtune.datasets`): every format into QAItem, the same ids and splits as synthesis,
deterministic selection, and one generic-JSONL file read the same by ingestion, synthesis and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.datasets import DatasetError, load_dataset, load_items, select, split_of
from ragtune.datasets.hotpotqa import doc_id as hotpotqa_doc_id
from ragtune.hashing import short_id

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
HOTPOT = DATA / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"
SQUAD = DATA / "squad_v2" / "official_dev-v2.0_first_article.json"
NQ = DATA / "nq_open_oracle" / "nq-open-oracle.jsonl.gz"

needs_data = pytest.mark.skipif(not HOTPOT.exists(), reason="shared data not found")


@needs_data
def test_hotpotqa_gold_paragraphs_and_supporting_facts():
    items = load_items("hotpotqa", HOTPOT)
    assert len(items) == 1186
    item = next(it for it in items if it.id == "5a8b57f25542995d1e6f1371")
    assert item.answers == ["yes"]
    assert {d.title for d in item.gold_docs} == {"Scott Derrickson", "Ed Wood"}
    assert len(item.distractor_docs) == 8
    gold = item.gold_docs[0]
    assert gold.doc_id == hotpotqa_doc_id(gold.title, gold.text)  # the id ingestion gives the paragraph
    assert len(item.supporting_facts) == 2 and all(f for f in item.supporting_facts)


@needs_data
def test_squad_v2_unanswerable_and_aliases():
    items = load_items("squad", SQUAD)
    assert len(items) == 208
    unanswerable = [it for it in items if not it.answerable]
    assert unanswerable and all(it.answers == [] for it in unanswerable)
    first = next(it for it in items if it.id == "56ddde6b9a695914005b9628")
    assert first.answers == ["France"]  # four identical aliases, deduplicated
    assert first.gold_docs[0].doc_id == short_id("squad", "Normans", first.gold_docs[0].text)
    assert first.distractor_docs and all(d.text != first.gold_docs[0].text for d in first.distractor_docs)


@needs_data
def test_nq_ids_match_synthesis():
    items = load_items("nq", NQ)
    assert len(items) == 2655
    item = items[0]
    assert item.id == short_id("nq", item.question)
    assert len(item.gold_docs) == 1 and item.answers


@needs_data
def test_selection_is_sorted_split_and_limited():
    items = load_dataset("hotpotqa", HOTPOT, split="eval", limit=5)
    assert [it.id for it in items] == sorted(it.id for it in items)
    assert all(split_of(it.id) == "eval" for it in items)
    assert len(items) == 5
    everything = load_dataset("hotpotqa", HOTPOT, split="all")
    train = load_dataset("hotpotqa", HOTPOT, split="train")
    evals = load_dataset("hotpotqa", HOTPOT, split="eval")
    assert len(train) + len(evals) == len(everything)
    assert not {it.id for it in train} & {it.id for it in evals}


def test_split_rule_is_the_documented_hash():
    import hashlib

    for item_id in ("a", "5a8b57f25542995d1e6f1371", "xyz-123"):
        expected = "eval" if int(hashlib.sha1(item_id.encode()).hexdigest(), 16) % 5 == 0 else "train"
        assert split_of(item_id) == expected


def test_generic_jsonl(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [
        {
            "id": "q1",
            "question": "Capital of France?",
            "answers": ["Paris", "paris"],
            "documents": [
                {"title": "France", "text": "Paris is the capital.", "isgold": True},
                {"title": "Spain", "text": "Madrid is the capital.", "isgold": False},
            ],
        },
        {"question": "Capital of Mars?", "answer": ""},
        {"question": "Who wrote it?", "answer": "Ann", "context": "Ann wrote it.", "distractors": ["Bob ran."]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    items = {it.question: it for it in load_items("jsonl", path)}
    q1 = items["Capital of France?"]
    assert q1.answers == ["Paris", "paris"]
    assert [d.title for d in q1.gold_docs] == ["France"] and [d.title for d in q1.distractor_docs] == ["Spain"]
    assert not items["Capital of Mars?"].answerable
    q3 = items["Who wrote it?"]
    assert q3.id == short_id("jsonl", "Who wrote it?", "Ann")  # as `ragtune synth from-qa` names it
    assert [d.text for d in q3.gold_docs] == ["Ann wrote it."] and [d.text for d in q3.distractor_docs] == ["Bob ran."]


def test_raft_group_file_and_gorilla_lines(tmp_path):
    example = {
        "id": "r1",
        "group_id": "c1",
        "question": "When was it built?",
        "documents": [{"doc_id": "d2", "text": "Noise.", "is_oracle": False}],
        "oracle_ids": ["c1"],
        "oracle_kept": False,
        "dropped_oracles": [{"doc_id": "c1", "text": "It was built in 1889.", "is_oracle": True}],
        "cot_answer": "##begin_quote##It was built in 1889.##end_quote##\n<ANSWER>: 1889",
        "answer": "1889",
        "split": "eval",
    }
    gorilla = {
        "id": "g1",
        "question": "Who?",
        "context": {"title": [["t1", "t2"]], "sentences": [["Ann did.", "Bob."]]},
        "oracle_context": "Ann did.",
        "cot_answer": "reason <ANSWER>: Ann",
    }
    path = tmp_path / "raft.jsonl"
    path.write_text(
        json.dumps({"group_id": "c1", "examples": [example], "counts": {}}) + "\n" + json.dumps(gorilla) + "\n",
        encoding="utf-8",
    )
    items = {it.id: it for it in load_items("raft", path)}
    r1 = items["r1"]
    assert r1.answers == ["1889"]
    assert [d.doc_id for d in r1.gold_docs] == ["c1"]  # the dropped oracle is put back for evaluation
    assert [d.doc_id for d in r1.distractor_docs] == ["d2"]
    assert select(list(items.values()), split="eval") and r1.metadata["split"] == "eval"
    g1 = items["g1"]
    assert g1.answers == ["Ann"] and [d.text for d in g1.gold_docs] == ["Ann did."]
    assert [d.text for d in g1.distractor_docs] == ["Bob."]


def test_bad_input_gives_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_items("hotpotqa", tmp_path / "missing.json")
    with pytest.raises(DatasetError, match="unknown data format"):
        load_items("csv", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_items("hotpotqa", bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"data": []}), encoding="utf-8")
    with pytest.raises(DatasetError, match="HotpotQA"):
        load_items("hotpotqa", wrong)


# One file with the aliases the generic reader accepts (query / answers / ctxs with gold flags, an explicit doc id, a
# bare-string distractor): before the readers were one, evaluation read it and synthesis rejected it.
ALIASED_ROWS = [
    {"qid": "a1", "query": "Which river runs through Paris?", "answers": ["the Seine", "Seine"],
     "ctxs": [{"title": "Paris", "text": "The Seine runs through Paris. It is long.", "isgold": True},
              {"title": "Rome", "text": "The Tiber runs through Rome.", "isgold": False}]},
    {"id": "a2", "question": "Who painted the ceiling?", "answer": "Michelangelo",
     "oracle": [{"id": "sistine", "title": "Sistine Chapel", "text": "Michelangelo painted the ceiling."}],
     "distractors": ["Raphael painted rooms nearby."]},
    {"question": "What is the capital of Peru?", "answer": "Lima", "context": "Lima is the capital of Peru.",
     "evidence": "Lima is the capital of Peru."},
]


def _aliased(tmp_path: Path) -> Path:
    path = tmp_path / "aliased.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ALIASED_ROWS) + "\n", encoding="utf-8")
    return path


def test_one_generic_jsonl_file_reads_the_same_in_ingest_synth_and_eval(tmp_path):
    from ragtune.corpus.loaders import LoadOptions, LoadReport, load_file
    from ragtune.eval import load_items as eval_load_items
    from ragtune.synth.from_qa import FromQAConfig, read_records, synthesize_from_qa
    from ragtune.synth.store import read_raft

    path = _aliased(tmp_path)
    items = {it.id: it for it in eval_load_items("jsonl", path)}
    third = short_id("jsonl", "What is the capital of Peru?", "Lima")
    assert set(items) == {"a1", "a2", third}
    assert [d.title for d in items["a1"].gold_docs] == ["Paris"]
    assert [d.title for d in items["a1"].distractor_docs] == ["Rome"]
    assert [d.doc_id for d in items["a2"].gold_docs] == ["sistine"]

    # ingest: exactly the documents evaluation shows, under the ids it scores retrieval against
    report = LoadReport()
    docs = load_file(path, LoadOptions(format="qa-jsonl"), report)
    expected = {d.doc_id: (d.title, d.text) for it in items.values() for d in it.documents()}
    assert {d.doc_id: (d.title, d.text) for d in docs} == expected and len(docs) == len(expected) == 5
    assert not report.warnings

    # synthesis: the same questions, ids (so the same hash split), answers, oracles and distractors
    records = {r.id: r for r in read_records("jsonl", path)}
    assert set(records) == set(items)
    for rid, record in records.items():
        item = items[rid]
        assert record.question == item.question and record.answer == item.answers[0]
        assert [d.doc_id for d in record.oracles] == [d.doc_id for d in item.gold_docs]
        assert [d.doc_id for d in record.own_distractors] == [d.doc_id for d in item.distractor_docs]
    assert records[third].evidence == [("", "Lima is the capital of Peru.")]
    ws = tmp_path / "ws"
    synthesize_from_qa("jsonl", path, ws, FromQAConfig(split="all", distractors=1, p_oracle=1.0))
    examples = read_raft(ws / "synth" / "raft.jsonl")
    assert {e.group_id for e in examples} == set(items)
    for e in examples:
        assert set(e.oracle_ids) == {d.doc_id for d in items[e.group_id].gold_docs}
        assert e.answer == items[e.group_id].answers[0] and e.quote_valid


def test_synthesis_names_a_question_without_an_oracle(tmp_path):
    from ragtune.synth.from_qa import read_records
    from ragtune.synth.raft import SynthConfigError

    path = tmp_path / "no_oracle.jsonl"
    path.write_text(json.dumps({"id": "x1", "question": "Why?", "answer": "Because."}) + "\n", encoding="utf-8")
    assert load_items("jsonl", path)[0].gold_docs == []  # evaluation reads it (scored without gold documents)
    with pytest.raises(SynthConfigError, match="'x1' has no oracle document"):
        list(read_records("jsonl", path))


@needs_data
@pytest.mark.parametrize(("fmt", "path"), [("squad", SQUAD), ("nq", NQ), ("hotpotqa", HOTPOT)])
def test_synthesis_reads_the_labelled_sets_through_the_same_reader(fmt, path):
    from ragtune.synth.from_qa import read_records

    items = {it.id: it for it in load_items(fmt, path)}
    records = list(read_records(fmt, path, include_unanswerable=True))
    assert records and len({r.id for r in records}) == len(records)
    for r in records:
        item = items[r.id]
        assert r.question == item.question and [d.doc_id for d in r.oracles] == [d.doc_id for d in item.gold_docs]
        assert r.evidence == item.evidence and (r.answer in item.answers or (not r.answer and not item.answerable))
