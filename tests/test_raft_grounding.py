"""Grounding: ragtune, not the teacher, finds the evidence in the oracle chunk, and every quote it writes is verbatim.

Units on real HotpotQA sentences (exact / normalised / fuzzy tiers, the sentence splitter's spans, shortening), then
the bundled SmolLM2-135M as teacher on real HotpotQA paragraphs (examples/hotpotqa_mini): every output quote is in
its chunk; and the rule-based stand-in (named a fake) for the two instruct-path cases a real model cannot be made to
produce on demand: a teacher that quotes verbatim keeps its quotes, one that misquotes is re-grounded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.prompts import shown_text
from ragtune.synth.fake_teacher import FakeTeacher
from ragtune.synth.grounding import _difflib_partial, ground, locate, normalise, shorten_answer, split_sentences
from ragtune.synth.raft import RaftConfig, report_paths, synthesize_raft
from ragtune.synth.store import read_raft
from ragtune.synth.validate import normalize_ws

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "examples" / "hotpotqa_mini" / "hotpotqa_mini.json"

MENOTTI = (
    "Gian Carlo Menotti (] ; July 7, 1911 – February 1, 2007) was an Italian-American composer and librettist. "
    "Although he often referred to himself as an American composer, he kept his Italian citizenship. He wrote the "
    'classic Christmas opera "Amahl and the Night Visitors", along with over two dozen other operas.'
)
TANKER = (
    "The SS Bull Run was a type T2 tanker built at Sun Shipbuilding and Drydock Co. in Chester, PA as hull number 287 "
    "and USMC number 362 in 1943. She was delivered to the War Shipping Administration on 8 November 1943."
)


def test_sentences_are_spans_of_the_chunk_and_abbreviations_do_not_split():
    sentences = split_sentences(TANKER)
    assert [s.text for s in sentences] == [
        "The SS Bull Run was a type T2 tanker built at Sun Shipbuilding and Drydock Co. in Chester, PA as hull "
        "number 287 and USMC number 362 in 1943.",
        "She was delivered to the War Shipping Administration on 8 November 1943.",
    ]
    assert all(TANKER[s.start : s.end] == s.text for s in sentences)
    assert len(split_sentences(MENOTTI)) == 3


def test_tiers_exact_normalised_fuzzy_and_missing():
    sentences = split_sentences(MENOTTI)
    exact = locate("Italian-American composer and librettist", sentences)
    assert exact[0].method == "exact" and exact[0].sentence == sentences[0]
    normalised = locate('amahl and the night visitors', sentences)  # case and quotes differ
    assert normalised[0].method == "normalised" and normalised[0].sentence == sentences[2]
    fuzzy = locate("Amahl and the Night Visiters", sentences)  # a misspelling
    assert fuzzy and fuzzy[0].method == "fuzzy" and fuzzy[0].score >= 85
    assert locate("Amahl and the Night Visiters", sentences, threshold=99.0) == []
    # characters alone would accept an invented name next to a copied date: every word must be there
    assert locate("Giuseppe on July 7, 1911", sentences) == []
    assert locate("Giuseppe Verdi", sentences) == []
    assert normalise('Menotti\'s "Hero"') == "menotti s hero"
    assert 80 < _difflib_partial("nite visitors", "amahl and the night visitors along") < 100


def test_ground_quotes_verbatim_and_shortens_a_sentence_answer():
    g = ground("Which Christmas opera did Gian Carlo Menotti write?", "Amahl and the Night Visitors", MENOTTI)
    assert g.ok and g.method == "exact" and g.answer == "Amahl and the Night Visitors"
    assert all(q in normalize_ws(MENOTTI) for q in g.quotes)
    # the answer's sentence says "He": the sentence naming Menotti is quoted too, in the chunk's order
    assert len(g.quotes) == 2 and g.quotes[1].startswith("He wrote the classic Christmas opera")
    assert g.quotes[0].startswith("Gian Carlo Menotti (]")
    # the small teacher's habit: the whole sentence as the answer -> quoted, and the answer cut to what is asked
    whole = "She was delivered to the War Shipping Administration on 8 November 1943."
    g = ground("When was the SS Bull Run delivered to the War Shipping Administration?", whole, TANKER,
               max_answer_words=6)
    assert g.ok and g.quotes[-1] == whole and g.shortened and g.answer == "8 November 1943"
    assert g.quotes[0].startswith("The SS Bull Run")  # "She" is the tanker: its naming sentence is quoted too
    assert shorten_answer("1943", "When?", 6) == "1943"
    # a fact split over two sentences: the second sentence is quoted too
    g = ground("Did the Italian-American composer keep his Italian citizenship?", "Gian Carlo Menotti", MENOTTI)
    assert g.ok and len(g.quotes) == 2
    missing = ground("Who commanded the tanker?", "Captain Smith", TANKER)
    assert not missing.ok and missing.reason == "answer not in chunk"


@pytest.fixture(scope="module")
def mini_ws(tmp_path_factory, embedder):
    """A workspace over 2 HotpotQA records of the bundled example (20 real paragraphs, one chunk each)."""
    from ragtune.index.ingest import ingest

    root = tmp_path_factory.mktemp("mini")
    data = root / "two.json"
    data.write_text(json.dumps(json.loads(MINI.read_text(encoding="utf-8"))[:2]), encoding="utf-8")
    ws = root / "ws"
    ingest([data], ws, embedder=embedder)
    return ws


def _assert_grounded(examples) -> None:
    for e in examples:
        oracle = next(d for d in [*e.documents, *e.dropped_oracles] if d.is_oracle)
        text = normalize_ws(shown_text(oracle))
        assert e.quotes and all(q in text for q in e.quotes), (e.question, e.quotes)
        for q in e.quotes:  # the chain of thought quotes exactly these
            assert f"##begin_quote##{q}##end_quote##" in normalize_ws(e.cot_answer)
        assert e.cot_answer.endswith(f"<ANSWER>: {e.answer}")


@pytest.mark.slow
def test_bundled_teacher_on_real_hotpotqa_paragraphs(mini_ws, tmp_path, embedder):
    """The issue's case: SmolLM2-135M as teacher, no labels. Few-shot prompts (auto for a local model), every kept
    quote verbatim in its chunk, and every candidate accounted for in the report."""
    from ragtune.llm import load_llm
    from ragtune.retrieve.search import Searcher

    teacher = load_llm()
    config = RaftConfig(limit=4, questions_per_chunk=1, distractors=1, question_tokens=40, concurrency=4, seed=3)
    out = tmp_path / "raft.jsonl"
    summary = synthesize_raft(mini_ws, teacher, config, out=out, searcher=Searcher(mini_ws, embedder=embedder))
    assert summary.groups_written == 4 and summary.groups_failed == 0
    examples = read_raft(out)
    _assert_grounded(examples)
    assert all(e.metadata["prompt_style"] == "fewshot" for e in examples)
    assert all(e.metadata["grounding"] in ("exact", "normalised", "fuzzy") for e in examples)
    report = json.loads(report_paths(out)[0].read_text())
    assert report["prompt_style"] == "fewshot" and report["chunks"] == 4
    assert report["candidates"] == 4 == report["kept"] + report["rejected"]
    assert report["kept"] == len(examples) >= 1  # the bundled teacher yields usable, grounded examples
    assert report["teacher_seconds"] > 0 and report["teacher_completion_tokens"] > 0


def test_verbatim_teacher_keeps_its_quotes_and_a_misquoting_one_is_regrounded(mini_ws, tmp_path, embedder):
    from ragtune.retrieve.search import Searcher

    searcher = Searcher(mini_ws, embedder=embedder)
    # the teacher sees the oracle only, so the fake's quotes come from it (from a distractor they are regrounded)
    base = dict(limit=4, questions_per_chunk=2, prompt_style="instruct", retries=0, dedup_threshold=1.0, seed=1,
                teacher_context="oracle")
    # bad_share=10**9: the fake never misquotes, so every kept example carries the teacher's own quotes
    honest = synthesize_raft(mini_ws, FakeTeacher(bad_share=10**9), RaftConfig(**base), out=tmp_path / "a.jsonl",
                             searcher=searcher)
    kept = read_raft(tmp_path / "a.jsonl")
    assert kept and honest.counts.get("grounding: teacher") == len(kept)
    assert all(e.metadata["grounding"] == "teacher" and e.cot_answer.startswith("The document says") for e in kept)

    # bad_share=1: every first answer quotes in upper case (not in the chunk); with no retry, grounding finds the
    # sentence from the answer instead
    synthesize_raft(mini_ws, FakeTeacher(bad_share=1), RaftConfig(**base), out=tmp_path / "b.jsonl",
                    searcher=searcher)
    regrounded = read_raft(tmp_path / "b.jsonl")
    assert regrounded and all(e.metadata["grounding"] != "teacher" for e in regrounded)
    _assert_grounded(regrounded)
    _assert_grounded(kept)
    off = synthesize_raft(mini_ws, FakeTeacher(bad_share=1), RaftConfig(**base, ground=False),
                          out=tmp_path / "c.jsonl", searcher=searcher)
    assert off.examples_total == 0 and off.counts.get("rejected: answerable", 0) > 0
