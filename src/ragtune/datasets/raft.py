"""RAFT data sets read as QA items: ragtune's `synth/raft.jsonl` (group lines of RaftExample) or the gorilla RAFT
format. Only their held-out split is evaluated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.datasets.base import QAItem, read_rows
from ragtune.datasets.generic import ANSWER_KEYS, first_of, item_from_record


def _raft_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    # ragtune synth writes group lines {"group_id", "examples": [...], "counts"}; gorilla RAFT writes flat examples.
    for lineno, record in read_rows(path):
        if "examples" in record and "group_id" in record:
            for n, example in enumerate(record.get("examples") or [], start=1):
                yield f"{path}:{lineno} (example {n})", example
        else:
            yield f"{path}:{lineno}", record


def load_raft(path: Path) -> list[QAItem]:
    """The gold answer is `answer` (else the text after `<ANSWER>:` of `cot_answer`); the oracle is every document
    flagged `is_oracle` plus `dropped_oracles` (the (1-P) share of training examples leave it out on purpose; an
    evaluation puts it back). The example's own `split` field, when present, decides its split.
    """
    from ragtune.metrics import extract_answer

    items = []
    for where, record in _raft_records(path):
        record = dict(record)
        if not first_of(record, ANSWER_KEYS) and record.get("cot_answer"):
            record["answer"] = extract_answer(str(record["cot_answer"]))
        if "documents" in record and "dropped_oracles" in record:  # ragtune RaftExample
            record["documents"] = list(record["documents"]) + [
                {**d, "is_oracle": True} for d in record.get("dropped_oracles") or []
            ]
        elif "oracle_context" in record and isinstance(record.get("context"), dict):  # gorilla: oracle is a string
            record["oracle"] = record.pop("oracle_context")
        item = item_from_record(record, "raft", where)
        item.answerable = bool(item.answers) or item.answerable
        if record.get("split") in ("train", "eval"):
            item.metadata["split"] = record["split"]
        items.append(item)
    return _merge_duplicates(items)


def _merge_duplicates(items: list[QAItem]) -> list[QAItem]:
    # A RAFT file can hold one question several times (one per distractor draw); evaluate it once, with every
    # distractor any copy had.
    merged: dict[str, QAItem] = {}
    for item in items:
        first = merged.get(item.id)
        if first is None:
            merged[item.id] = item
            continue
        known = {d.text for d in first.gold_docs + first.distractor_docs}
        first.distractor_docs += [d for d in item.distractor_docs if d.text not in known]
    return list(merged.values())
