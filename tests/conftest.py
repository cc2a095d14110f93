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
