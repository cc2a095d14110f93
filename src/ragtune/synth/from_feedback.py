"""`ragtune synth from-feedback`: what users said about served answers, as training data for both halves.

The server (`ragtune serve`) stores every answer with the exact chunks it was given, and every thumbs up / down /
corrected answer, in WORKSPACE/serve/feedback.sqlite3; the curation page adds accept / edit / reject decisions. This
module reads that file (read-only, the schema in `ragtune.serve.feedback` is the contract) and writes:

- `sft.jsonl`: RAFT examples (`train sft --data`): the question, the chunks the model saw (those holding the answer
  marked as oracles), and the corrected or approved answer as a quoted chain of thought;
- `preferences.jsonl`: DPO pairs in TRL's format (`train dpo --data`): the prompt the model saw, chosen = the
  correction (or an approved answer to the same question), rejected = the answer that was served and disliked;
- `pairs.jsonl`: retriever pairs (`train retriever --method contrastive --data`, `train reranker --data`): the
  question, the chunk that holds the answer (or the one the user marked relevant), the other retrieved chunks as hard
  negatives;
- `raft_curated.jsonl`: the generated RAFT examples (`synth/raft.jsonl`) with curation applied: rejected ones left
  out, edits applied.

Feedback the curator rejected is never used. The split (train / eval) is hashed from the question, so feedback on
one question never lands on both sides. The files are rebuilt from the database on every run (they are derived data).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.datasets.base import sentence_with
from ragtune.prompts import ANSWER_TAG
from ragtune.records import ContextDoc
from ragtune.splits import split_of
from ragtune.synth.config import FromFeedbackConfig as FromFeedbackConfig  # re-exported: this builder's settings
from ragtune.synth.export import _write_jsonl
from ragtune.synth.from_qa import evidence_cot_short
from ragtune.synth.records import Group, PairExample, RaftExample
from ragtune.synth.store import GroupFile, read_raft
from ragtune.workspace import Manifest, Workspace

FEEDBACK_DB = Path("serve") / "feedback.sqlite3"


def feedback_db_path(workspace: Workspace | str | os.PathLike[str]) -> Path:
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    return ws.root / FEEDBACK_DB


class FeedbackDataError(FileNotFoundError):
    """No feedback database where one was expected."""


@dataclass
class FromFeedbackSummary:
    out_dir: Path
    feedback_rows: int = 0
    used: int = 0
    skipped_rejected: int = 0
    skipped_unreviewed: int = 0
    sft: int = 0
    preferences: int = 0
    pairs: int = 0
    raft_curated: int | None = None
    raft_rejected: int = 0
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)


def normalize_question(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def short_answer(text: str) -> str:
    """The final answer of a generation: what follows the last `<ANSWER>:` tag, or the whole text."""
    return text.rsplit(ANSWER_TAG, 1)[1].strip() if ANSWER_TAG in text else text.strip()


def _same(a: str, b: str) -> bool:
    return normalize_question(short_answer(a)) == normalize_question(short_answer(b))


def _connect_read_only(db_path: Path) -> sqlite3.Connection:
    if not db_path.exists():
        raise FeedbackDataError(
            f"no feedback database at {db_path}: serve the workspace (`ragtune serve`) and send feedback first"
        )
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    return db


def read_feedback(db_path: Path, tenant: str | None = None) -> list[dict[str, Any]]:
    """Feedback rows joined with their response (messages, contexts) and review, oldest first."""
    db = _connect_read_only(db_path)
    try:
        where, args = ("WHERE f.tenant = ?", (tenant,)) if tenant else ("", ())
        rows = db.execute(
            "SELECT f.*, s.messages AS messages, s.contexts AS contexts, r.status AS review_status, "
            "r.edits AS review_edits FROM feedback f "
            "LEFT JOIN responses s ON s.id = f.response_id AND s.tenant = f.tenant "
            "LEFT JOIN reviews r ON r.kind = 'feedback' AND r.item_id = f.id AND r.tenant = f.tenant "
            f"{where} ORDER BY f.seq", args,
        ).fetchall()
    finally:
        db.close()
    out = []
    for r in rows:
        row = dict(r)
        row["messages"] = json.loads(row["messages"]) if row["messages"] else None
        row["contexts"] = json.loads(row["contexts"]) if row["contexts"] else []
        row["review_edits"] = json.loads(row["review_edits"]) if row["review_edits"] else {}
        row["relevant_chunk_ids"] = json.loads(row["relevant_chunk_ids"] or "[]")
        row["irrelevant_chunk_ids"] = json.loads(row["irrelevant_chunk_ids"] or "[]")
        out.append(row)
    return out


def read_raft_reviews(db_path: Path) -> dict[str, dict[str, Any]]:
    """Curation decisions on generated RAFT examples, by example id."""
    db = _connect_read_only(db_path)
    try:
        return {r["item_id"]: dict(r) for r in db.execute("SELECT * FROM reviews WHERE kind = 'raft'").fetchall()}
    finally:
        db.close()


def _final_answer(row: dict[str, Any]) -> str | None:
    """The answer the user (or curator) vouches for: an edited / given correction, or the served answer liked."""
    correction = row["review_edits"].get("correction") or row["correction"]
    if correction and correction.strip():
        return correction.strip()
    if row["rating"] == "up":
        return row["answer"]
    return None


def _positives(row: dict[str, Any], answer: str) -> list[dict[str, Any]]:
    """Chunks that support the answer: those the user marked relevant, else those that contain the short answer."""
    contexts = row["contexts"]
    marked = set(row["relevant_chunk_ids"])
    if marked:
        return [c for c in contexts if c["chunk_id"] in marked]
    short = short_answer(answer)
    if len(short) < 2:
        return []
    return [c for c in contexts if sentence_with(c.get("text", ""), short)]


def _cot(question: str, answer: str, positives: list[dict[str, Any]]) -> tuple[str, bool]:
    """The answer in the RAFT layout the student is trained on: quoted evidence, then `<ANSWER>: ...`."""
    if ANSWER_TAG in answer:
        return answer, "##begin_quote##" in answer
    short = short_answer(answer)
    evidence = [(c.get("title", ""), s) for c in positives if (s := sentence_with(c.get("text", ""), short))]
    if evidence:
        return evidence_cot_short(question, short, evidence), True
    return f"{ANSWER_TAG} {short}", False


def sft_example(row: dict[str, Any], answer: str) -> RaftExample:
    positives = _positives(row, answer)
    oracle_ids = [c["chunk_id"] for c in positives]
    documents = [
        ContextDoc(doc_id=c["chunk_id"], text=c.get("text", ""), title=c.get("title", ""),
                   is_oracle=c["chunk_id"] in oracle_ids)
        for c in row["contexts"]
    ]
    cot, quoted = _cot(row["question"], answer, positives)
    return RaftExample(
        id=row["id"], group_id=row["id"], question=row["question"], documents=documents, oracle_ids=oracle_ids,
        oracle_kept=bool(oracle_ids), cot_answer=cot, answer=short_answer(answer), quote_valid=quoted,
        source="feedback", split=split_of(normalize_question(row["question"])),
        metadata={"tenant": row["tenant"], "response_id": row["response_id"], "rating": row["rating"]},
    )


def pair_example(row: dict[str, Any], answer: str) -> PairExample | None:
    positives = _positives(row, answer)
    if not positives:
        return None
    positive = positives[0]
    negatives = [
        c for c in row["contexts"]
        if c["chunk_id"] not in {p["chunk_id"] for p in positives}
        and (c["chunk_id"] in set(row["irrelevant_chunk_ids"]) or not sentence_with(c.get("text", ""),
                                                                                    short_answer(answer)))
    ]
    return PairExample(
        id=row["id"], question=row["question"], positive_id=positive["chunk_id"], positive=positive.get("text", ""),
        negative_ids=[c["chunk_id"] for c in negatives], negatives=[c.get("text", "") for c in negatives],
        source="feedback", split=split_of(normalize_question(row["question"])),
    )


def preference_rows(rows: list[dict[str, Any]], answers: dict[str, str]) -> list[dict[str, Any]]:
    """DPO rows: each served answer that was disliked or corrected, against the correction or a liked answer to the
    same question from the same tenant."""
    liked: dict[tuple[str, str], str] = {}
    for row in rows:
        if row["id"] in answers:
            liked[(row["tenant"], normalize_question(row["question"]))] = answers[row["id"]]
    out = []
    for row in rows:
        if row["rating"] != "down" and not (row["id"] in answers and not _same(answers[row["id"]], row["answer"])):
            continue
        chosen = answers.get(row["id"])
        if chosen is None or _same(chosen, row["answer"]):
            chosen = liked.get((row["tenant"], normalize_question(row["question"])))
        if not chosen or _same(chosen, row["answer"]) or not row["answer"].strip():
            continue
        prompt = row["messages"] or [{"role": "user", "content": row["question"]}]
        out.append({"prompt": prompt, "chosen": chosen, "rejected": row["answer"], "id": row["id"],
                    "split": split_of(normalize_question(row["question"]))})
    return out


def _write_groups(path: Path, items: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """A synth group file (one group per item), written to a temporary name and moved into place."""
    tmp = path.with_suffix(".jsonl.tmp")
    n = 0
    with GroupFile(tmp, overwrite=True) as f:
        for group_id, example in items:
            f.append(Group(group_id=group_id, examples=[example], counts={"examples": 1}))
            n += 1
    os.replace(tmp, path)
    return n


def curated_raft(raft_path: Path, reviews: dict[str, dict[str, Any]], reviewed_only: bool
                 ) -> tuple[list[RaftExample], int]:
    """Generated RAFT examples with the curator's decisions applied: (kept examples, how many were rejected)."""
    kept, rejected = [], 0
    for example in read_raft(raft_path):
        review = reviews.get(example.id)
        status = review["status"] if review else None
        if status == "rejected":
            rejected += 1
            continue
        if reviewed_only and status is None:
            continue
        edits = json.loads(review["edits"]) if review and review.get("edits") else {}
        update = {k: v for k, v in edits.items() if k in ("question", "answer", "cot_answer") and isinstance(v, str)}
        kept.append(example.model_copy(update=update) if update else example)
    return kept, rejected


def build_from_feedback(workspace: Workspace | str | os.PathLike[str], config: FromFeedbackConfig | None = None,
                        out_dir: Path | None = None) -> FromFeedbackSummary:
    """Write the four files under `out_dir` (default WORKSPACE/synth/feedback) and a manifest."""
    started = time.perf_counter()
    config = config or FromFeedbackConfig()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    out_dir = Path(out_dir) if out_dir else ws.feedback_data_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_feedback(feedback_db_path(ws), config.tenant)
    summary = FromFeedbackSummary(out_dir=out_dir, feedback_rows=len(rows))

    usable = []
    for row in rows:
        if row["review_status"] == "rejected":
            summary.skipped_rejected += 1
        elif config.reviewed_only and row["review_status"] is None:
            summary.skipped_unreviewed += 1
        else:
            usable.append(row)
    summary.used = len(usable)
    answers = {row["id"]: a for row in usable if (a := _final_answer(row))}

    sft = [sft_example(row, answers[row["id"]]) for row in usable if row["id"] in answers]
    pairs = [p for row in usable if row["id"] in answers and (p := pair_example(row, answers[row["id"]]))]
    prefs = preference_rows(usable, answers)
    files = {name: out_dir / f"{name}.jsonl" for name in ("sft", "preferences", "pairs")}
    summary.sft = _write_groups(files["sft"], ((e.id, e.model_dump()) for e in sft))
    summary.pairs = _write_groups(files["pairs"], ((p.id, p.model_dump()) for p in pairs))
    _write_jsonl(files["preferences"], prefs)
    summary.preferences = len(prefs)

    raft_path = ws.raft_path
    if raft_path.exists():
        reviews = read_raft_reviews(feedback_db_path(ws))
        kept, summary.raft_rejected = curated_raft(raft_path, reviews, config.reviewed_only)
        files["raft_curated"] = out_dir / "raft_curated.jsonl"
        summary.raft_curated = _write_groups(files["raft_curated"], ((e.group_id, e.model_dump()) for e in kept))
    summary.files = {k: str(v) for k, v in files.items()}
    summary.seconds = time.perf_counter() - started
    ws.write_manifest(Manifest(
        stage="synth-from-feedback",
        inputs={"feedback_db": str(feedback_db_path(ws))},
        config={"tenant": config.tenant, "reviewed_only": config.reviewed_only},
        counts={"feedback_rows": summary.feedback_rows, "used": summary.used, "sft": summary.sft,
                "preferences": summary.preferences, "pairs": summary.pairs, "raft_curated": summary.raft_curated or 0,
                "skipped_rejected": summary.skipped_rejected},
        timings={"seconds": summary.seconds},
        extra={"files": summary.files},
    ))
    return summary
