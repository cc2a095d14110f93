"""Training rows in TRL's documented formats, built from the files earlier stages wrote.

- SFT: conversational prompt-completion rows (`{"prompt": [messages], "completion": [assistant]}`), so TRL applies the
  model's own chat template and puts the loss on the answer only.
- RA-DIT LM-ft: each of a question's top-k retrieved chunks becomes its own row, "Background: <chunk>" then the
  question, with the gold answer as completion (Lin et al. 2023, section 2.3); optionally mixed with plain instruction
  data at a ratio.
- DPO: `{"prompt", "chosen", "rejected"}` conversational rows; DAP: `{"text"}` rows of corpus chunks.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ragtune.jsonl import read_jsonl
from ragtune.llm.base import Message
from ragtune.prompts import RADIT_SYSTEM, STUDENT_SYSTEM, radit_user_prompt, with_title
from ragtune.synth.prompts import student_messages
from ragtune.synth.records import PreferenceExample, RaftExample
from ragtune.synth.store import read_preferences, read_raft
from ragtune.train.config import TrainConfigError

Row = dict[str, Any]


def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def load_raft(path: str | Path, split: str = "train", limit: int | None = None) -> list[RaftExample]:
    """RAFT examples of one hash split, in file order, with a clear error for a missing or empty file."""
    path = Path(path)
    if not path.exists():
        raise TrainConfigError(
            f"no training data at {path}: build it with `ragtune synth raft` or `ragtune synth from-qa`, or pass --data"
        )
    try:
        examples = read_raft(path, split=split)  # each example carries the hash split synthesis gave it
    except ValueError as exc:  # pydantic validation errors are ValueErrors
        raise TrainConfigError(f"{path} is not a RAFT file written by `ragtune synth`: {exc}") from exc
    examples = [e for e in examples if e.cot_answer.strip()]
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise TrainConfigError(f"{path} holds no usable examples for split {split!r}")
    return examples


def raft_rows(examples: Sequence[RaftExample], system_prompt: str | None = STUDENT_SYSTEM) -> list[Row]:
    """RAFT SFT rows: the student prompt (documents + question) and the quoted chain-of-thought answer.

    The same `student_messages` renders the prompt at evaluation (`--prompt cot`), so the student is evaluated on the
    layout it learned.
    """
    return [
        {"prompt": student_messages(e, system_prompt), "completion": _assistant(e.cot_answer), "id": e.id}
        for e in examples
    ]


def radit_rows(
    examples: Sequence[RaftExample],
    retrieve: Any,
    top_k: int = 3,
    system_prompt: str | None = RADIT_SYSTEM,
) -> list[Row]:
    """RA-DIT LM-ft rows: one per (question, retrieved chunk), the short gold answer as completion.

    `retrieve(question, k)` returns hits with `.title` and `.text` (a `Searcher.search` bound to a mode). Training on
    each chunk separately teaches the generator both to use a relevant chunk and to ignore an irrelevant one, since
    the target stays the gold answer either way.
    """
    rows: list[Row] = []
    for e in examples:
        for rank, hit in enumerate(retrieve(e.question, top_k)):
            text = with_title(hit.title, hit.text)
            messages: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages.append({"role": "user", "content": radit_user_prompt(e.question, text)})
            rows.append({"prompt": messages, "completion": _assistant(e.answer), "id": f"{e.id}:{rank}"})
    return rows


def read_instruction_rows(path: str | Path) -> list[Row]:
    """Plain instruction data for mixing: JSONL of `{"messages": [...]}` (last turn the assistant's) or
    `{"prompt", "completion"}` (strings or message lists)."""
    path = Path(path)
    if not path.exists():
        raise TrainConfigError(f"no instruction data at {path}")
    rows = [_instruction_row(record, where) for where, record in _jsonl_records(path)]
    if not rows:
        raise TrainConfigError(f"{path} holds no instruction examples")
    return rows


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed record) for each non-blank line; a line that is not JSON stops with its location."""
    return ((f"{path}:{lineno}", record) for lineno, record in read_jsonl(path, objects=False, error=TrainConfigError))


def _instruction_row(record: Any, where: str) -> Row:
    if isinstance(record, dict) and isinstance(record.get("messages"), list):
        messages = record["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise TrainConfigError(f"{where}: the last message must be the assistant's")
        return {"prompt": messages[:-1], "completion": messages[-1:], "id": where}
    if isinstance(record, dict) and "prompt" in record and "completion" in record:
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(completion, str):
            completion = _assistant(completion)
        return {"prompt": prompt, "completion": completion, "id": where}
    raise TrainConfigError(f"{where}: expected {{'messages': [...]}} or {{'prompt', 'completion'}}")


def mix(task_rows: Sequence[Row], instruction_rows: Sequence[Row], ratio: float, seed: int = 0) -> list[Row]:
    """Task rows plus instruction rows making up `ratio` of the result (sampled with replacement only when there are
    too few), shuffled with a fixed seed."""
    if ratio <= 0 or not instruction_rows:
        return list(task_rows)
    rng = random.Random(seed)
    wanted = round(len(task_rows) * ratio / (1.0 - ratio))
    pool = list(instruction_rows)
    picked = rng.sample(pool, wanted) if wanted <= len(pool) else [rng.choice(pool) for _ in range(wanted)]
    rows = list(task_rows) + picked
    rng.shuffle(rows)
    return rows


def preference_rows(examples: Iterable[PreferenceExample], split: str = "train") -> list[Row]:
    """TRL's conversational preference format from `ragtune synth preferences` output."""
    rows = []
    for p in examples:
        if split != "all" and p.split not in (None, split):
            continue
        rows.append({"prompt": p.messages, "chosen": _assistant(p.chosen), "rejected": _assistant(p.rejected)})
    return rows


def load_preferences(path: str | Path, split: str = "train") -> list[Row]:
    path = Path(path)
    if not path.exists():
        raise TrainConfigError(
            f"no preference data at {path}: build it with `ragtune synth preferences` or pass --data"
        )
    if path.suffix == ".jsonl" and _looks_like_plain_preferences(path):
        return _plain_preference_rows(path)
    try:
        rows = preference_rows(read_preferences(path), split)
    except ValueError as exc:
        raise TrainConfigError(f"{path}: not a preference file ({exc})") from exc
    if not rows:
        raise TrainConfigError(f"{path} holds no preference pairs for split {split!r}")
    return rows


def _looks_like_plain_preferences(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and {"prompt", "chosen", "rejected"} <= set(first)
    return False


def _plain_preference_rows(path: Path) -> list[Row]:
    """Preference JSONL in TRL's own format (strings or message lists), as a user may bring from elsewhere."""
    rows = []
    for where, r in _jsonl_records(path):
        if not isinstance(r, dict) or not all(
            isinstance(r.get(k), (str, list)) and r.get(k) for k in ("prompt", "chosen", "rejected")
        ):
            raise TrainConfigError(f"{where}: prompt, chosen and rejected must all be non-empty")
        prompt = [{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else r["prompt"]
        chosen = _assistant(r["chosen"]) if isinstance(r["chosen"], str) else r["chosen"]
        rejected = _assistant(r["rejected"]) if isinstance(r["rejected"], str) else r["rejected"]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def corpus_rows(workspace: Any, limit: int | None = None) -> list[Row]:
    """DAP rows: every indexed chunk's title and text, in chunk-id order (stable across runs)."""
    from ragtune.index.store import ChunkStore

    store = ChunkStore(workspace)
    if not store.exists():
        raise TrainConfigError(f"no index in {workspace}: run `ragtune ingest PATH --workspace {workspace}` first")
    chunks = store.read_chunks()
    rows = [{"text": with_title(c.title, c.text)} for c in chunks]
    return rows[:limit] if limit is not None else rows
