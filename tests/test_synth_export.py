"""Exports of the synthesized data (`ragtune export`): OpenAI chat and DPO files, ShareGPT, completion, a Hugging
Face dataset folder, the dataset card, and the refusals (too few examples, a bad role)."""

from __future__ import annotations

import json

import pytest
from conftest import HOTPOT_SHARED, needs_shared, raft_example

from ragtune.synth.export import ExportError, export
from ragtune.synth.from_qa import FromQAConfig, synthesize_from_qa
from ragtune.synth.records import Group, PreferenceExample
from ragtune.synth.store import GroupFile, read_raft


def test_exports(hotpot_raft, tmp_path):
    ws, _ = hotpot_raft
    card = export(ws, "openai-chat", tmp_path / "chat.jsonl", tokenizer="words")
    lines = [json.loads(x) for x in (tmp_path / "chat.jsonl").read_text().splitlines()]
    assert len(lines) == card["examples"] == sum(e.split == "train" for e in read_raft(ws / "synth" / "raft.jsonl"))
    assert [m["role"] for m in lines[0]["messages"]] == ["system", "user", "assistant"]
    assert "<DOCUMENT>" in lines[0]["messages"][1]["content"]
    assert card["quote_validity_rate"] == 1.0 and card["k"] == 3
    assert 0.7 < card["p_oracle_observed"] < 0.9
    assert card["quotes_in_oracle_exported"] == card["quotes_exported"]
    assert sum(card["token_length_histogram"].values()) == card["examples"]
    assert (tmp_path / "chat.card.md").read_text().startswith("# Dataset card")
    for fmt, name in [("sharegpt", "sg.jsonl"), ("completion", "c.jsonl")]:
        export(ws, fmt, tmp_path / name, system_prompt=None, tokenizer="words")
        row = json.loads((tmp_path / name).read_text().splitlines()[0])
        assert ("conversations" in row) if fmt == "sharegpt" else ({"prompt", "completion"} <= set(row))
    export(ws, "hf", tmp_path / "hf", split="all", tokenizer="words")
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "hf" / "data" / "eval.parquet").num_rows > 100
    assert "configs:" in (tmp_path / "hf" / "README.md").read_text()


@needs_shared
def test_export_needs_ten_examples(tmp_path):
    synthesize_from_qa("hotpotqa", HOTPOT_SHARED, tmp_path, FromQAConfig(limit=5))
    with pytest.raises(ExportError, match="at least 10"):
        export(tmp_path, "openai-chat", tmp_path / "x.jsonl", tokenizer="words")


def test_dpo_export(tmp_path):
    e = raft_example()
    with GroupFile(tmp_path / "synth" / "preferences.jsonl") as f:
        rows = [
            PreferenceExample(
                id=f"p{i}",
                example_id="e",
                messages=[{"role": "user", "content": f"q{i}"}],
                chosen=e.cot_answer,
                rejected="<ANSWER>: 1859",
                reason="wrong_answer",
                split="train",
            ).model_dump()
            for i in range(12)
        ]
        f.append(Group(group_id="g", examples=rows))
    export(tmp_path, "openai-dpo", tmp_path / "dpo.jsonl", tokenizer="words")
    row = json.loads((tmp_path / "dpo.jsonl").read_text().splitlines()[0])
    assert set(row) == {"input", "preferred_output", "non_preferred_output"}
    assert row["input"]["messages"][-1]["role"] == "user"
    assert row["preferred_output"][0]["role"] == "assistant"
    bad = tmp_path / "bad"
    with GroupFile(bad / "synth" / "preferences.jsonl") as f:
        rows[3]["messages"] = [{"role": "robot", "content": "x"}]
        f.append(Group(group_id="g", examples=rows))
    with pytest.raises(ExportError, match="role"):
        export(bad, "openai-dpo", bad / "dpo.jsonl", tokenizer="words")
