"""Export synthesized data to the formats fine-tuning services and libraries take, validated, with a dataset card.

- `openai-chat`: `{"messages": [system?, user, assistant]}` per line (OpenAI / TRL conversational SFT).
- `openai-dpo`: `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`.
- `hf`: a folder loadable with `datasets.load_dataset(folder)`: parquet per split plus a README.md card.
- `completion`: `{"prompt", "completion"}` (TRL prompt-completion).
- `sharegpt`: `{"conversations": [{"from": "system"|"human"|"gpt", "value"}]}`.

Every file is checked before it is written (roles, non-empty turns, the service's minimum of 10 examples), so a
fine-tuning job does not fail an hour later on a malformed line. The card (`OUT.card.md` + `.card.json`, or the
folder's README.md) gives counts, P, k, a token-length histogram and the quote-validity rate.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune.prompts import STUDENT_SYSTEM, shown_text
from ragtune.synth import prompts
from ragtune.synth.raft import SynthConfigError
from ragtune.synth.records import PreferenceExample, RaftExample
from ragtune.synth.store import read_preferences, read_raft, sum_counts
from ragtune.synth.validate import clean_quotes, quote_verbatim
from ragtune.workspace import Workspace

FORMATS = ("openai-chat", "openai-dpo", "hf", "completion", "sharegpt")
ROLES = {"system", "user", "assistant"}
MIN_EXAMPLES = 10
BINS = (128, 256, 512, 1024, 2048, 4096, 8192)


class ExportError(ValueError):
    """The data would not be accepted by the target format; the message names the first bad line."""


def chat_messages(example: RaftExample, system_prompt: str | None) -> list[dict[str, str]]:
    return [*prompts.student_messages(example, system_prompt), {"role": "assistant", "content": example.cot_answer}]


def validate_chat(messages: Any, where: str, final_role: str = "assistant") -> None:
    if not isinstance(messages, list) or not messages:
        raise ExportError(f"{where}: messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ExportError(f"{where}: message {i} has role {m.get('role') if isinstance(m, dict) else m!r}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise ExportError(f"{where}: message {i} ({m['role']}) is empty")
        if m["role"] == "system" and i != 0:
            raise ExportError(f"{where}: a system message may only come first")
    if messages[-1]["role"] != final_role:
        raise ExportError(f"{where}: the last message must be the {final_role}'s")
    if not any(m["role"] == "user" for m in messages):
        raise ExportError(f"{where}: no user message")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _token_counter(tokenizer: str | None) -> tuple[Callable[[str], int], str]:
    """Count with the student's tokenizer when it loads; otherwise words, and the card says so."""
    if tokenizer != "words":
        try:
            from transformers import AutoTokenizer

            from ragtune.models import resolve_generator

            tok = AutoTokenizer.from_pretrained(resolve_generator(tokenizer).path)
            unit = f"tokens ({tokenizer or 'default generator'})"
            return (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), unit
        except Exception:  # noqa: BLE001 - a card without exact token counts is still useful
            pass
    return (lambda text: len(text.split())), "whitespace words"


def histogram(lengths: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    low = 0
    for high in BINS:
        out[f"{low}-{high - 1}"] = sum(low <= n < high for n in lengths)
        low = high
    out[f">={low}"] = sum(n >= low for n in lengths)
    return out


def build_card(
    kind: str,
    rows_text: list[str],
    examples: list[RaftExample],
    source: Path,
    fmt: str,
    split: str,
    tokenizer: str | None,
    preferences: list[PreferenceExample] | None = None,
) -> dict[str, Any]:
    count, unit = _token_counter(tokenizer)
    lengths = [count(t) for t in rows_text]
    counts = sum_counts(source)
    card: dict[str, Any] = {
        "format": fmt,
        "kind": kind,
        "source": str(source),
        "split": split,
        "examples": len(rows_text),
        "token_unit": unit,
        "token_length_histogram": histogram(lengths),
        "token_length_max": max(lengths, default=0),
        "token_length_mean": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
    }
    if examples:
        kept = sum(e.oracle_kept for e in examples)
        distractors = Counter(sum(not d.is_oracle for d in e.documents) for e in examples)
        quotes = [(q, e) for e in examples for q in clean_quotes(e.cot_answer)]
        oracle_texts = {
            e.id: [shown_text(d) for d in [*e.documents, *e.dropped_oracles] if d.is_oracle] for e in examples
        }
        ok = sum(quote_verbatim(q, oracle_texts[e.id]) for q, e in quotes)
        card |= {
            "p_oracle_observed": round(kept / len(examples), 4),
            "oracle_kept": kept,
            "oracle_dropped": len(examples) - kept,
            "distractors_per_example": dict(sorted(distractors.items())),
            "k": min((n for n in distractors), default=0),
            "sources": dict(Counter(e.source for e in examples)),
            "splits": dict(Counter(e.split or "none" for e in examples)),
            "quotes_exported": len(quotes),
            "quotes_in_oracle_exported": ok,
        }
    if counts.get("answers_checked"):
        card["quote_validity_rate"] = round(counts.get("answers_valid", 0) / counts["answers_checked"], 4)
        card["answers_checked"] = counts["answers_checked"]
        card["answers_valid"] = counts.get("answers_valid", 0)
        card["dropped"] = {k.split(": ", 1)[1]: v for k, v in counts.items() if k.startswith("dropped: ")}
    if preferences is not None:
        card["rejected_reasons"] = dict(Counter(p.reason for p in preferences))
    return card


def card_markdown(card: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", "", "Generated by `ragtune export`.", "", "| field | value |", "|---|---|"]
    for key in (
        "format",
        "kind",
        "split",
        "examples",
        "p_oracle_observed",
        "oracle_kept",
        "oracle_dropped",
        "k",
        "distractors_per_example",
        "quote_validity_rate",
        "answers_checked",
        "answers_valid",
        "dropped",
        "quotes_exported",
        "quotes_in_oracle_exported",
        "sources",
        "splits",
        "rejected_reasons",
        "token_unit",
        "token_length_mean",
        "token_length_max",
        "source",
    ):
        if key in card:
            value = card[key]
            lines.append(f"| {key} | {json.dumps(value) if isinstance(value, dict) else value} |")
    lines += ["", f"## Token lengths ({card['token_unit']}, prompt + answer)", "", "| range | examples |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in card["token_length_histogram"].items()]
    lines += [
        "",
        "P is the share of examples that show their oracle document; k is the number of distractors shown "
        "beside it (an example without its oracle shows k + 1 distractors instead, k + n with n oracles).",
        "",
    ]
    return "\n".join(lines)


def export(
    workspace: str | Path,
    fmt: str,
    out: str | Path,
    system_prompt: str | None = STUDENT_SYSTEM,
    split: str = "train",
    source: str | Path | None = None,
    tokenizer: str | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> dict[str, Any]:
    """Export the workspace's RAFT (or, for openai-dpo, preference) data; returns the dataset card."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    ws = Workspace(workspace)
    out = Path(out)
    kind = "preferences" if fmt == "openai-dpo" else "raft"
    source = Path(source) if source else ws.synth_path(kind)
    if not source.exists():
        raise SynthConfigError(f"{source} does not exist: run `ragtune synth {kind}` first.")
    if fmt == "openai-dpo":
        prefs = [p for p in read_preferences(source) if split == "all" or p.split in (split, None)]
        rows = []
        for i, p in enumerate(prefs, start=1):
            messages = list(p.messages)
            if system_prompt is not None:  # an explicit --system-prompt replaces the one used at synthesis
                messages = [m for m in messages if m["role"] != "system"]
                if system_prompt:
                    messages.insert(0, {"role": "system", "content": system_prompt})
            validate_chat(messages, f"{source} pair {i}", final_role="user")
            if not p.chosen.strip() or not p.rejected.strip():
                raise ExportError(f"{source} pair {i}: empty chosen or rejected answer")
            if p.chosen.strip() == p.rejected.strip():
                raise ExportError(f"{source} pair {i}: chosen and rejected are the same")
            rows.append(
                {
                    "input": {"messages": messages},
                    "preferred_output": [{"role": "assistant", "content": p.chosen}],
                    "non_preferred_output": [{"role": "assistant", "content": p.rejected}],
                }
            )
        _check_count(len(rows), min_examples, fmt)
        texts = [" ".join(m["content"] for m in p.messages) + " " + p.chosen for p in prefs]
        card = build_card(kind, texts, [], source, fmt, split, tokenizer, prefs)
        _write_jsonl(out, rows)
        _write_card(out, card)
        return card

    examples = read_raft(source, split=split)
    for i, e in enumerate(examples, start=1):
        if not e.cot_answer.strip() or not e.answer.strip():
            raise ExportError(f"{source} example {i} ({e.id}): empty answer")
    _check_count(len(examples), min_examples, fmt)
    conversations = [chat_messages(e, system_prompt) for e in examples]
    for i, messages in enumerate(conversations, start=1):
        validate_chat(messages, f"{source} example {i}")
    texts = [" ".join(m["content"] for m in c) for c in conversations]
    card = build_card(kind, texts, examples, source, fmt, split, tokenizer)
    if fmt == "openai-chat":
        _write_jsonl(out, [{"messages": c} for c in conversations])
    elif fmt == "completion":
        rows = []
        for e, c in zip(examples, conversations, strict=True):
            prompt = "\n\n".join(m["content"] for m in c[:-1]) + "\n"
            rows.append({"prompt": prompt, "completion": " " + e.cot_answer})
        _write_jsonl(out, rows)
    elif fmt == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        _write_jsonl(
            out,
            [{"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in c]} for c in conversations],
        )
    else:  # hf
        _write_hf(out, examples, conversations, card)
        return card
    _write_card(out, card)
    return card


def _check_count(n: int, minimum: int, fmt: str) -> None:
    if n < minimum:
        raise ExportError(
            f"{fmt} needs at least {minimum} examples, found {n} (OpenAI rejects smaller files; "
            "pass --min-examples to override)"
        )


def _write_card(out: Path, card: dict[str, Any]) -> None:
    from ragtune.workspace import write_json_atomic

    base = out.with_name(out.name.rsplit(".", 1)[0] if "." in out.name else out.name)
    write_json_atomic(base.with_name(base.name + ".card.json"), card)
    base.with_name(base.name + ".card.md").write_text(
        card_markdown(card, f"Dataset card: {out.name}"), encoding="utf-8"
    )


def _write_hf(
    out: Path, examples: list[RaftExample], conversations: list[list[dict[str, str]]], card: dict[str, Any]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    by_split: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_split.setdefault(e.split or "train", []).append(i)
    configs = []
    for split_name, idx in sorted(by_split.items()):
        table = pa.table(
            {
                "id": [examples[i].id for i in idx],
                "question": [examples[i].question for i in idx],
                "documents": [[d.model_dump() for d in examples[i].documents] for i in idx],
                "oracle_ids": [examples[i].oracle_ids for i in idx],
                "oracle_kept": [examples[i].oracle_kept for i in idx],
                "cot_answer": [examples[i].cot_answer for i in idx],
                "answer": [examples[i].answer for i in idx],
                "source": [examples[i].source for i in idx],
                "messages": [conversations[i] for i in idx],
            }
        )
        pq.write_table(table, out / "data" / f"{split_name}.parquet")
        configs.append(f"  - split: {split_name}\n    path: data/{split_name}.parquet")
    header = "---\nconfigs:\n- config_name: default\n  data_files:\n" + "\n".join(configs) + "\n---\n\n"
    (out / "README.md").write_text(header + card_markdown(card, "RAFT dataset (ragtune)"), encoding="utf-8")
    from ragtune.workspace import write_json_atomic

    write_json_atomic(out / "card.json", card)
