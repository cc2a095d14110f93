"""Shared fixtures: real models (the bundled ones), real stores, real data.

Tests that read ../shared/data skip, saying why, when it is absent (a user's clone has no ../shared); the bundled
example under examples/ covers the same paths for them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
EXAMPLES = ROOT / "examples"
HOTPOT_SHARED = SHARED_DATA / "hotpotqa" / "hotpot_dev_distractor_v1_subset.json"
RAFT_SAMPLE_DOCS = SHARED_DATA / "raft_sample_docs"
HOTPOT_MINI = EXAMPLES / "hotpotqa_mini" / "hotpotqa_mini.json"
SQUAD_SHARED = SHARED_DATA / "squad_v2" / "official_dev-v2.0_first_article.json"
NQ_SHARED = SHARED_DATA / "nq_open_oracle" / "nq-open-oracle.jsonl.gz"
# An oracle chunk with a line break and a run of spaces inside a sentence: quotes must match it rewrapped.
ORACLE = "The Eiffel Tower was completed in 1889.\nIt is 330 metres   tall and stands in Paris."

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.exists(),
    reason=f"{SHARED_DATA} is absent (only CI has ../shared); the bundled examples cover this path",
)


def is_eval_id(qid: str) -> bool:
    return int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 5 == 0


@pytest.fixture(scope="session")
def embedder():
    """One embedder for the whole session: loading MiniLM costs seconds, and every index test needs it."""
    from ragtune.index.embedding import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def hotpot_questions(tmp_path_factory) -> tuple[Path, list[dict]]:
    """100 evaluation-split HotpotQA questions (by sorted _id) from ../shared, written as an official-format file."""
    if not HOTPOT_SHARED.exists():
        pytest.skip(f"{HOTPOT_SHARED} is absent (only CI has ../shared)")
    data = json.loads(HOTPOT_SHARED.read_text(encoding="utf-8"))
    chosen = sorted((q for q in data if is_eval_id(q["_id"])), key=lambda q: q["_id"])[:100]
    path = tmp_path_factory.mktemp("hotpot") / "hotpot_eval100.json"
    path.write_text(json.dumps(chosen), encoding="utf-8")
    return path, chosen


@pytest.fixture(scope="session")
def hotpot_ws(hotpot_questions, embedder, tmp_path_factory):
    """A workspace holding every paragraph of those 100 questions (~1,100 chunks)."""
    from ragtune.index.ingest import ingest

    path, _ = hotpot_questions
    ws = tmp_path_factory.mktemp("hotpot_ws")
    ingest([path], ws, embedder=embedder)
    return ws


def raft_example():
    """One RAFT example: the oracle above and a distractor about another tower, with a valid quoted answer."""
    from ragtune.records import ContextDoc
    from ragtune.synth.records import RaftExample

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


@pytest.fixture(scope="session")
def hotpot_raft(tmp_path_factory):
    """A workspace whose synth/raft.jsonl holds from-qa examples of every question of the shared HotpotQA subset
    (both splits), and the run's summary: the input of the pair, export and from-qa tests."""
    from ragtune.synth.from_qa import FromQAConfig, synthesize_from_qa

    if not HOTPOT_SHARED.exists():
        pytest.skip(f"{HOTPOT_SHARED} is absent (only CI has ../shared)")
    ws = tmp_path_factory.mktemp("hotpot_raft")
    summary = synthesize_from_qa("hotpotqa", HOTPOT_SHARED, ws, FromQAConfig(split="all", seed=1))
    return ws, summary
