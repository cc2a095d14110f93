"""Round trip through the student (`--round-trip student|either|both`) and few-shot resampling (`--resample`).

The student is the real bundled SmolLM2 (the model the data trains): shown only the chunk, it must answer a kept
question with the teacher's answer. Teachers here are rule-based fakes (named so) where the test needs a teacher
that says a chosen thing; the student never is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ragtune.llm.base import Generation, GenerationConfig, Message
from ragtune.synth import filters
from ragtune.synth.fake_teacher import FakeTeacher
from ragtune.synth.raft import RaftConfig, SynthConfigError, report_paths, synthesize_raft
from ragtune.synth.store import iter_groups, read_raft

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "examples" / "hotpotqa_mini" / "hotpotqa_mini.json"
HERO = (
    "The Hero is a two-act opera by Italian-American composer Gian Carlo Menotti. Commissioned by the Opera Company "
    "of Philadelphia, the work premiered at the Philadelphia Academy of Music on June 1, 1976."
)


@pytest.fixture(scope="module")
def mini_ws(tmp_path_factory, embedder):
    from ragtune.index.ingest import ingest

    root = tmp_path_factory.mktemp("mini")
    data = root / "three.json"
    data.write_text(json.dumps(json.loads(MINI.read_text(encoding="utf-8"))[:3]), encoding="utf-8")
    ws = root / "ws"
    ingest([data], ws, embedder=embedder)
    return ws


@pytest.fixture(scope="module")
def searcher(mini_ws, embedder):
    from ragtune.retrieve.search import Searcher

    return Searcher(mini_ws, embedder=embedder)


@pytest.fixture(scope="module")
def student():
    from ragtune.llm import load_llm

    return load_llm()


@pytest.fixture(scope="module")
def hero(mini_ws):
    from ragtune.index.store import ChunkStore

    return next(c for c in ChunkStore(mini_ws).read_chunks() if c.title == "The Hero (opera)")


def _rejected(out: Path) -> list[dict]:
    return [r for g in iter_groups(filters.rejected_path(out)) for r in g["examples"]]


def test_student_check_passes_what_the_chunk_says_and_fails_a_wrong_pairing(student):
    check = filters.StudentCheck(student, min_match=0.5)
    verdicts = check.verdicts([
        ("Who composed the opera The Hero?", "Gian Carlo Menotti", "The Hero (opera)", HERO),
        ("Who composed the opera The Hero?", "Philadelphia", "The Hero (opera)", HERO),  # in the chunk, wrong answer
    ])
    assert verdicts[0][0] and "match 1.00" in verdicts[0][1]
    assert not verdicts[1][0] and "Menotti" in verdicts[1][1]


class _HeroFakeTeacher(FakeTeacher):
    """A rule-based fake teacher with a chosen (question, answer) per focus sentence of The Hero's chunk: one
    right, one whose answer is in the chunk but answers another question (grounding passes it, the student not)."""

    def _qa(self, request: str) -> str:
        sentence = request.split("\nSentence: ", 1)[1]
        if sentence.startswith("The Hero is"):
            return "Question: Who composed the opera The Hero?\nAnswer: Gian Carlo Menotti"
        return "Question: Who wrote the two-act opera The Hero?\nAnswer: the Philadelphia Academy of Music"


@pytest.mark.slow
def test_student_mode_keeps_the_right_pairing_only(mini_ws, hero, student, tmp_path):
    out = tmp_path / "raft.jsonl"
    config = RaftConfig(questions_per_chunk=2, round_trip="student", dedup_threshold=1.0, seed=1)
    summary = synthesize_raft(mini_ws, _HeroFakeTeacher(name="fake-hero"), config, chunks=[hero], out=out,
                              student=student)
    kept = read_raft(out)
    assert [e.question for e in kept] == ["Who composed the opera The Hero?"]
    assert kept[0].metadata["round_trip_by"] == "student" and kept[0].metadata["round_trip_rank"] is None
    rejected = [r for r in _rejected(out) if r["filter"] == "round_trip"]
    assert [r["reason"] for r in rejected] == ["the student did not answer it from the chunk"]
    assert "student:" in rejected[0]["detail"] and "match 0.00" in rejected[0]["detail"]
    report = json.loads(report_paths(out)[0].read_text())
    assert report["candidates"] == 2 == report["kept"] + report["rejected"]
    assert report["round_trip_by"] == {"student": 1}
    assert report["notes"]["round_trip"].startswith(f"student {student.name} answers from the chunk")
    assert summary.counts["answers_valid"] == 1 and summary.counts["rejected: round_trip"] == 1


@pytest.mark.slow
def test_either_mode_keeps_every_retriever_pass_and_may_add_student_passes(mini_ws, searcher, student, tmp_path):
    """The fake's vague questions ("What does the text say about ...?") often miss their chunk at k=1: `either`
    keeps every question `retriever` keeps and gives the others to the student; all candidates still add up."""
    base = dict(limit=5, questions_per_chunk=2, round_trip_k=1, dedup_threshold=1.0, seed=4)
    a, b = tmp_path / "retriever.jsonl", tmp_path / "either.jsonl"
    synthesize_raft(mini_ws, FakeTeacher(), RaftConfig(**base), out=a, searcher=searcher)
    synthesize_raft(mini_ws, FakeTeacher(), RaftConfig(**base, round_trip="either"), out=b, searcher=searcher,
                    student=student)
    by_retriever = {e.question for e in read_raft(a)}
    either = read_raft(b)
    assert by_retriever <= {e.question for e in either}
    for e in either:
        assert (e.metadata["round_trip_by"] == "retriever") == (e.question in by_retriever)
        assert e.metadata["round_trip_by"] == "retriever" or e.metadata["round_trip_rank"] is None
    ra, rb = (json.loads(report_paths(p)[0].read_text()) for p in (a, b))
    assert ra["filters"]["round_trip"]["rejected"] > 0  # there was something for the student to look at
    assert rb["candidates"] == ra["candidates"] == rb["kept"] + rb["rejected"]
    assert rb["filters"]["round_trip"]["rejected"] == ra["filters"]["round_trip"]["rejected"] - (
        rb["kept"] - ra["kept"])
    assert set(rb["filters"]["round_trip"]["reasons"]) <= {"neither the retriever nor the student found its chunk"}
    assert sum(rb["round_trip_by"].values()) == rb["kept"]
    assert ", else student" in rb["notes"]["round_trip"]


class _SamplingFakeTeacher(FakeTeacher):
    """A rule-based fake teacher whose greedy answer is an invented one and whose sampled answer (temperature > 0)
    is the focus sentence's last words, as the fake's usual answer; it records each call's temperature and seed."""

    def __init__(self):
        super().__init__(name="fake-sampling")
        self.seen: list[tuple[float, int | None, int]] = []

    def generate(self, conversations: list[list[Message]], config: GenerationConfig | None = None,
                 batch_size: int = 8) -> list[Generation]:
        config = config or GenerationConfig()
        self.seen.append((config.temperature, config.seed, len(conversations)))
        outs = super().generate(conversations, config, batch_size)
        if config.temperature == 0:
            for g in outs:
                g.text = g.text.split("\nAnswer:", 1)[0] + "\nAnswer: an invented fact"
        return outs


def test_resample_asks_only_rejected_slots_again_sampling(mini_ws, searcher, tmp_path):
    base = dict(limit=3, questions_per_chunk=2, round_trip_k=0, dedup_threshold=1.0, seed=2)
    greedy = synthesize_raft(mini_ws, _SamplingFakeTeacher(), RaftConfig(**base), out=tmp_path / "a.jsonl",
                             searcher=searcher)
    assert greedy.examples_total == 0 and greedy.counts["rejected: answerable"] == greedy.counts["candidates"]

    teacher = _SamplingFakeTeacher()
    config = RaftConfig(**base, resample=2)
    out = tmp_path / "b.jsonl"
    summary = synthesize_raft(mini_ws, teacher, config, out=out, searcher=searcher)
    slots = greedy.counts["candidates"]
    assert teacher.seen[0] == (0.0, 2, slots)  # one greedy call for every slot
    assert teacher.seen[1][:2] == (config.resample_temperature, 2 * 1000 + 1)  # then a seeded sample...
    assert teacher.seen[1][2] == slots  # ...for exactly the rejected ones (all of them here)
    kept = read_raft(out)
    assert kept and len(kept) == summary.counts["answers_valid"]
    assert summary.counts["question_retries"] >= slots
    report = json.loads(report_paths(out)[0].read_text())
    assert report["candidates"] == report["kept"] + report["rejected"] == slots + summary.counts["question_retries"]
    assert len(teacher.seen) <= 1 + config.resample
    # a setting that changes the output is part of the fingerprint: resuming under another value is refused
    with pytest.raises(SynthConfigError, match="resample"):
        synthesize_raft(mini_ws, _SamplingFakeTeacher(), RaftConfig(**base, resample=1), out=out, searcher=searcher)


def test_new_settings_leave_old_fingerprints_alone_and_are_checked():
    default = RaftConfig().fingerprint()
    assert "round_trip" not in default and "resample" not in default  # files written before them still resume
    assert RaftConfig(round_trip="both", resample=1).fingerprint()["round_trip"] == "both"
    for bad, option in ((dict(round_trip="sometimes"), "--round-trip"), (dict(student_match=1.5), "--student-match"),
                        (dict(resample=-1), "--resample")):
        with pytest.raises(ValidationError, match=option):
            RaftConfig(**bad)


def test_cli_passes_the_new_options_and_reports_a_bad_mode(mini_ws, tmp_path):
    import typer
    from typer.testing import CliRunner

    from ragtune.cli.synth import register

    app = typer.Typer()
    register(app)
    args = ["synth", "raft", "--workspace", str(mini_ws), "--out", str(tmp_path / "raft.jsonl"), "--resample", "1",
            "--student-match", "0.6", "--round-trip", "sometimes"]
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "--round-trip must be one of retriever, student, either, both" in said
    result = CliRunner().invoke(app, [*args[:-2], "--student-match", "1.5"])
    assert result.exit_code == 2 and "student-match" in result.output
