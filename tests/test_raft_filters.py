"""Question filters of `synth raft`: each rejects a crafted bad case and keeps a good one; near-duplicates go across
the corpus; rejections land in a 0600 `rejected.jsonl`; the quality report's counts add up; and the prompts run
against a real OpenAI-compatible server (ragtune's own, serving the bundled model on 127.0.0.1) through the CLI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ragtune.prompts import shown_text
from ragtune.synth import filters
from ragtune.synth.fake_teacher import FakeTeacher
from ragtune.synth.raft import RaftConfig, report_paths, synthesize_raft
from ragtune.synth.store import iter_groups, read_raft
from ragtune.synth.teacher_prompts import focus_sentences, parse_qa, qa_messages, resolve_style
from ragtune.synth.validate import normalize_ws

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


def test_well_formedness():
    good = "Which company commissioned the opera The Hero?"
    assert filters.well_formed(good, HERO, "the Opera Company of Philadelphia") is None
    assert filters.well_formed("The Hero is an opera by Menotti.", HERO) == "not a question"
    assert filters.well_formed("Menotti wrote it, right?", HERO) == "not a question"
    assert filters.well_formed("Why?", HERO) == "question too short"
    copied = "The Hero is a two-act opera by Italian-American composer Gian Carlo Menotti?"
    assert filters.well_formed(copied, HERO) == "question copies the chunk"
    assert filters.well_formed("Did Gian Carlo Menotti compose The Hero?", HERO, "Gian Carlo Menotti") == (
        "question gives its answer away"
    )
    assert filters.well_formed("", HERO) == "no question in the teacher's output"


def test_length_budget():
    assert filters.length_problem("Who wrote The Hero?", "Gian Carlo Menotti", "c " * 20, 30, 12, 160) is None
    assert filters.length_problem("Who wrote The Hero?", "word " * 13, "c", 30, 12, 160) == "answer over 12 words"
    assert filters.length_problem("Who " * 31 + "?", "x", "c", 30, 12, 160) == "question over 30 words"
    assert filters.length_problem("Who?", "x", "c " * 161, 30, 12, 160) == "chain of thought over 160 words"


def test_round_trip_through_the_workspace_search(mini_ws, searcher):
    from ragtune.index.store import ChunkStore

    chunks = {c.title: c for c in ChunkStore(mini_ws).read_chunks()}
    hero, tanker = chunks["The Hero (opera)"], chunks["SS Bull Run (T-AO-156)" if "SS Bull Run (T-AO-156)" in chunks
                                                      else next(t for t in chunks if "Bull Run" in t)]
    rt = filters.RoundTrip(searcher, k=3)
    assert rt.problem("Which company commissioned Menotti's opera The Hero?", hero.chunk_id) is None
    assert rt.rank("Which company commissioned Menotti's opera The Hero?", hero.chunk_id) is not None
    # a question about another chunk's facts does not point back to the Hero chunk
    assert rt.problem("What hull number did the tanker SS Bull Run have?", hero.chunk_id) == (
        "source chunk not in the retriever's top 3"
    )
    assert rt.problem("What hull number did the tanker SS Bull Run have?", tanker.chunk_id) is None


def test_near_duplicates_keep_the_first_phrasing(embedder):
    qs = ["Who composed the opera The Hero?", "When was the Battle of Cold Harbor fought?",
          "Who was the composer of the opera The Hero?", "Which composer wrote The Hero opera?",
          "Who composed The Old Maid and the Thief?"]
    assert filters.near_duplicates(embedder.encode(qs), 0.9) == [None, None, 0, 0, None]
    assert filters.near_duplicates(embedder.encode(qs), 0.99) == [None] * 5


def test_teacher_prompts_parse_and_style():
    assert resolve_style("auto", "smollm2-135m-instruct") == "fewshot"
    assert resolve_style("auto", "openai:gpt-4o-mini") == "instruct"
    assert resolve_style("instruct", "local") == "instruct"
    with pytest.raises(ValueError):
        resolve_style("chatty", "x")
    assert parse_qa("Question: Who wrote The Hero?\nAnswer: Gian Carlo Menotti.") == (
        "Who wrote The Hero?", "Gian Carlo Menotti.")
    assert parse_qa("1. Question: Who wrote it? extra\nAnswer: him") == ("Who wrote it?", "him")
    assert parse_qa("The Hero is an opera.") is None
    focus = focus_sentences(HERO, 1)
    messages = qa_messages(HERO, focus[0].text, "The Hero (opera)")
    assert messages[-1]["content"].startswith("Text: The Hero (opera). The Hero is a two-act opera")
    assert sum(m["role"] == "assistant" for m in messages) == 3  # three worked examples for a small teacher


class _CraftedTeacher(FakeTeacher):
    """A fake teacher (rule-based, no model) that writes the same question for every chunk and twice per chunk,
    plus one non-question: the duplicate and well-formedness paths, end to end."""

    def _qa(self, request: str) -> str:
        sentence = request.split("\nSentence: ", 1)[1].split("\nWrite one question", 1)[0]
        if len(sentence) % 4 == 0:
            return "I am not sure what to ask."
        return f"Question: What does this paragraph say about its subject?\nAnswer: {' '.join(sentence.split()[:3])}"


def test_duplicates_removed_rejections_kept_0600_and_the_report_adds_up(mini_ws, tmp_path, searcher):
    out = tmp_path / "raft.jsonl"
    config = RaftConfig(limit=6, questions_per_chunk=2, round_trip_k=0, seed=2, dedup_threshold=0.9)
    summary = synthesize_raft(mini_ws, _CraftedTeacher(name="fake-crafted"), config, out=out, searcher=searcher)
    examples = read_raft(out)
    assert len(examples) == 1  # one question survives across six chunks
    rejected = [r for g in iter_groups(filters.rejected_path(out)) for r in g["examples"]]
    assert os.stat(filters.rejected_path(out)).st_mode & 0o777 == 0o600
    reasons = {r["reason"] for r in rejected}
    assert {"near-duplicate", "same question twice for the chunk"} <= reasons
    assert all(r["filter"] in filters.FILTERS and r["chunk_id"] for r in rejected)
    report = json.loads(report_paths(out)[0].read_text())
    assert report["candidates"] == report["kept"] + report["rejected"] == summary.counts["candidates"]
    assert report["rejected"] == len(rejected)
    assert report["filters"]["duplicate"]["rejected"] == sum(r["filter"] == "duplicate" for r in rejected)
    assert report["filters"]["duplicate"]["example"]["reason"] in reasons
    assert summary.examples_total == summary.counts["answers_valid"] == 1
    assert "| duplicate |" in report_paths(out)[1].read_text()
    # a rerun has nothing left to do and removes nothing more: same file, same counts
    before = out.read_text()
    again = synthesize_raft(mini_ws, _CraftedTeacher(name="fake-crafted"), config, out=out, searcher=searcher)
    assert out.read_text() == before and again.counts == summary.counts


def test_every_filter_counted_on_a_real_corpus(mini_ws, tmp_path, searcher):
    """The rule-based fake's questions are vague ("What does the text say about ..."): round trip and the rest
    reject some; whatever happens, each candidate ends kept or rejected exactly once."""
    out = tmp_path / "raft.jsonl"
    synthesize_raft(mini_ws, FakeTeacher(), RaftConfig(limit=10, round_trip_k=1, seed=4), out=out, searcher=searcher)
    report = json.loads(report_paths(out)[0].read_text())
    assert report["candidates"] == report["kept"] + sum(f["rejected"] for f in report["filters"].values())
    assert report["filters"]["round_trip"]["rejected"] > 0
    for e in read_raft(out):
        assert e.metadata["round_trip_rank"] == 1
        oracle = next(d for d in [*e.documents, *e.dropped_oracles] if d.is_oracle)
        assert all(q in normalize_ws(shown_text(oracle)) for q in e.quotes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_server():
    """ragtune's OpenAI-compatible server over the bundled SmolLM2, in its own process on 127.0.0.1."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragtune.llm.server", "--model", "smollm2-135m-instruct", "--port", str(port),
         "--api-key", "secret", "--name", "smol"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/models", headers={"Authorization": "Bearer secret"}, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("server did not start")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("style", ["auto", "fewshot"])
def test_cli_against_an_openai_compatible_server(mini_ws, model_server, tmp_path, style):
    """`ragtune synth raft --teacher openai:smol`: auto means the instruct prompts for a server teacher, fewshot
    is asked for explicitly; both keep only verbatim quotes, write the report and print its table."""
    import typer

    from ragtune.cli.synth import register

    app = typer.Typer()
    register(app)
    out = tmp_path / "raft.jsonl"
    args = ["synth", "raft", "--workspace", str(mini_ws), "--teacher", "openai:smol", "--base-url", model_server,
            "--api-key", "secret", "--limit", "2", "--questions-per-chunk", "1", "--distractors", "1",
            "--question-tokens", "40", "--answer-tokens", "64", "--retries", "0", "--concurrency", "2",
            "--prompt-style", style, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "quality:" in result.output and "round_trip" in result.output
    report = json.loads(report_paths(out)[0].read_text())
    assert report["prompt_style"] == ("instruct" if style == "auto" else "fewshot")
    assert report["teacher_requests"] >= 2 and report["teacher_completion_tokens"] > 0
    assert report["candidates"] == report["kept"] + report["rejected"]
    for e in read_raft(out):
        oracle = next(d for d in [*e.documents, *e.dropped_oracles] if d.is_oracle)
        assert all(q in normalize_ws(shown_text(oracle)) for q in e.quotes)


class _WholeSentenceTeacher(FakeTeacher):
    """A fake teacher (rule-based) with the small model's habit of answering with the whole sentence."""

    def _qa(self, request: str) -> str:
        sentence = request.split("\nSentence: ", 1)[1].split("\nWrite one question", 1)[0]
        return f"Question: What does this paragraph say about {sentence.split()[0]}?\nAnswer: {sentence}"


def test_length_budget_rejects_whole_sentence_answers(mini_ws, tmp_path, searcher):
    out = tmp_path / "raft.jsonl"
    config = RaftConfig(limit=4, questions_per_chunk=2, round_trip_k=0, dedup_threshold=1.0, seed=5)
    synthesize_raft(mini_ws, _WholeSentenceTeacher(name="fake-whole"), config, out=out, searcher=searcher)
    rejected = [r for g in iter_groups(filters.rejected_path(out)) for r in g["examples"]]
    lengths = [r for r in rejected if r["filter"] == "length"]
    assert lengths and {r["reason"] for r in lengths} <= {"answer is a whole sentence", "answer over 12 words"}
    for e in read_raft(out):  # whatever was kept was shortened within the budget, never the sentence itself
        assert len(e.answer.split()) <= config.max_answer_words
        assert all(normalize_ws(e.answer).rstrip(".") != q.rstrip(".") for q in e.quotes)


def test_without_an_index_round_trip_is_off_and_said_so(mini_ws, tmp_path):
    """A library caller passing chunks to a workspace without an index: nothing to search, so the report says
    round trip was off instead of failing (or pretending it ran)."""
    from ragtune.index.store import ChunkStore

    chunks = ChunkStore(mini_ws).read_chunks()
    out = tmp_path / "raft.jsonl"
    summary = synthesize_raft(tmp_path / "bare", FakeTeacher(), RaftConfig(limit=3, dedup_threshold=1.0),
                              chunks=chunks, out=out)
    report = json.loads(report_paths(out)[0].read_text())
    assert summary.examples_total > 0 and report["notes"]["round_trip"] == "off: no index in the workspace"
    assert report["filters"]["round_trip"]["rejected"] == 0
    assert "round_trip off: no index" in report_paths(out)[1].read_text()
