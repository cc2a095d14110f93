"""Generator training with the real bundled SmolLM2 and real TRL / PEFT: a couple of optimiser steps per test.

The point is that each path works end to end (data -> TRL -> checkpoint -> adapter or model -> loads and changes
the model's predictions), not the quality of two steps; quality is `benchmarks/raft_hotpotqa.py`'s job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HOTPOT_MINI
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Small, fast settings: short sequences, batch 1.
FAST = dict(batch_size=1, grad_accum=1, max_length=512, save_steps=1, logging_steps=1)
CLI_FAST = ["--batch-size", "1", "--grad-accum", "1", "--max-length", "512"]


def trimmed_hotpot(n: int) -> list[dict]:
    """The first `n` bundled HotpotQA questions, paragraphs cut after their last supporting sentence (distractors
    after one sentence): real questions and evidence, ~200-token examples, so a training step takes a second or two."""
    data = json.loads(HOTPOT_MINI.read_text(encoding="utf-8"))[:n]
    for ex in data:
        last: dict[str, int] = {}
        for title, idx in ex["supporting_facts"]:
            last[title] = max(last.get(title, 0), idx)
        ex["context"] = [[t, s[: last.get(t, 0) + 1]] for t, s in ex["context"]]
    return data


@pytest.fixture(scope="module")
def raft_ws(tmp_path_factory) -> Path:
    """RAFT data from the bundled HotpotQA sample: gold paragraphs + 1 distractor, short evidence chains of thought."""
    from ragtune.synth.from_qa import FromQAConfig, synthesize_from_qa

    ws = tmp_path_factory.mktemp("raft_ws")
    source = ws / "hotpot_trimmed.json"
    source.write_text(json.dumps(trimmed_hotpot(16)), encoding="utf-8")
    synthesize_from_qa("hotpotqa", source, ws, FromQAConfig(cot="evidence-short", distractors=1))
    return ws


@pytest.fixture(scope="module")
def sft_result(raft_ws):
    from ragtune.train.config import SFTRunConfig
    from ragtune.train.sft import train_sft

    return train_sft(raft_ws, config=SFTRunConfig(max_steps=2, **FAST), name="lora", quiet=True)


def test_loss_is_on_the_answer_only(raft_ws, tmp_path):
    """Every trained token belongs to the assistant's answer (plus its end-of-turn), none to the documents."""
    from ragtune.train.config import SFTRunConfig
    from ragtune.train.sft import build_sft_trainer

    prepared = build_sft_trainer(raft_ws, None, raft_ws / "synth" / "raft.jsonl",
                                 SFTRunConfig(max_steps=1, **FAST), tmp_path, quiet=True)
    tok = prepared.trainer.processing_class
    dataset = prepared.trainer.train_dataset
    assert len(dataset) >= 4
    for row in dataset:
        trained = [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        masked = len(row["input_ids"]) - len(trained)
        answer = row["completion"][0]["content"]
        assert tok.decode(trained).startswith(answer)
        assert "<ANSWER>:" in tok.decode(trained)
        assert "<DOCUMENT>" not in tok.decode(trained)
        assert masked > 50  # the documents and the question, none of them trained on
        # the masked part is exactly the rendered prompt, ending with the opened assistant turn
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert row["input_ids"][:masked] == tok(prompt, add_special_tokens=False)["input_ids"]


def test_sft_lora_writes_an_adapter_that_changes_the_model(raft_ws, sft_result):
    import torch
    from safetensors.torch import load_file

    from ragtune.llm import load_llm

    r = sft_result
    assert r.steps == 2 and r.output_kind == "adapter" and r.world_size == 1
    assert r.tokens > 100 and r.tokens_per_second > 0 and r.peak_memory_mb > 100
    assert r.train_loss is not None and 0 < r.train_loss < 20
    adapter = Path(r.output)
    assert (adapter / "adapter_config.json").exists() and (adapter / "tokenizer_config.json").exists()
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(float(torch.count_nonzero(w)) > 0 for w in lora_b)  # B starts at zero; training moved it
    summary = json.loads((Path(r.run_dir) / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["method"] == "lora"
    assert (raft_ws / "manifests" / "train-lora.json").exists()

    request = ([{"role": "user", "content": "Question: Who wrote Maria Golovin?"}], "Gian Carlo Menotti")
    base = load_llm(None).loglikelihood([request])[0]
    tuned = load_llm(None, adapter=str(adapter)).loglikelihood([request])[0]
    assert tuned != pytest.approx(base, abs=1e-4)


def test_interrupted_run_refuses_to_restart_and_resumes(raft_ws):
    """Checkpoints exist -> a plain rerun stops with a clear message; --resume continues from the last one."""
    from ragtune.train.config import SFTRunConfig, TrainConfigError
    from ragtune.train.sft import train_sft

    first = train_sft(raft_ws, config=SFTRunConfig(max_steps=1, **FAST), name="resume", quiet=True)
    assert first.steps == 1
    with pytest.raises(TrainConfigError, match="--resume"):
        train_sft(raft_ws, config=SFTRunConfig(max_steps=2, **FAST), name="resume", quiet=True)
    second = train_sft(raft_ws, config=SFTRunConfig(max_steps=2, **FAST), name="resume", resume=True, quiet=True)
    assert second.resumed_from and second.resumed_from.endswith("checkpoint-1")
    assert second.steps == 2
    # the resumed run's loss curve holds the step trained before the interruption too, once
    curve = json.loads((raft_ws / "train" / "resume" / "loss_curve.json").read_text(encoding="utf-8"))
    assert [h["step"] for h in curve["history"]] == [1, 2]
    assert curve["loss"][0] == pytest.approx(first.history[0]["loss"], abs=1e-6)


@pytest.mark.slow
def test_kill_9_then_resume(raft_ws):
    """A real `kill -9` mid-run, just as checkpoint-2 starts being written: the rerun with --resume skips the
    half-written checkpoint, continues from the last complete one and finishes the run."""
    cmd = [sys.executable, "-m", "ragtune", "train", "sft", "--workspace", str(raft_ws), "--name", "killed",
           "--max-steps", "5", "--save-steps", "1", *CLI_FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = raft_ws / "train" / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoints / "checkpoint-2").exists():
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (checkpoints / "checkpoint-2").exists(), "no checkpoint before the kill"
    assert not (raft_ws / "train" / "killed" / "adapter").exists()
    done = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["steps"] == 5
    resumed_step = int(summary["resumed_from"].rsplit("-", 1)[1])
    assert resumed_step >= 2 or "interrupted while being saved" in done.stderr
    assert resumed_step >= 1
    assert Path(summary["output"], "adapter_model.safetensors").exists()


def test_merge_writes_a_plain_model_folder(raft_ws):
    from transformers import AutoModelForCausalLM

    from ragtune.train.config import SFTRunConfig
    from ragtune.train.sft import train_sft

    r = train_sft(raft_ws, config=SFTRunConfig(max_steps=1, merge=True, **FAST), name="merged", quiet=True)
    assert r.output_kind == "model"
    config = json.loads((Path(r.output) / "config.json").read_text())
    assert "quantization_config" not in config  # the de-quantised GGUF base must not be saved as quantised
    model = AutoModelForCausalLM.from_pretrained(r.output)
    assert not hasattr(model, "peft_config")


def test_qlora_without_a_gpu_says_why(raft_ws):
    from ragtune.cli import app

    result = CliRunner().invoke(app, ["train", "sft", "--workspace", str(raft_ws), "--method", "qlora",
                                      "--max-steps", "1"])
    assert result.exit_code == 2
    assert "CUDA" in result.output and "--method lora" in result.output


def test_bad_inputs_are_one_line_errors(tmp_path):
    from ragtune.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["train", "sft", "--workspace", str(tmp_path)])
    assert missing.exit_code == 2 and "ragtune synth" in missing.output
    bad = runner.invoke(app, ["train", "sft", "--workspace", str(tmp_path), "--method", "lorax"])
    assert bad.exit_code == 2 and "--method" in bad.output


def test_mix_keeps_the_requested_share():
    from ragtune.train.data import mix

    task = [{"id": f"t{i}"} for i in range(80)]
    instructions = [{"id": f"i{i}"} for i in range(100)]
    mixed = mix(task, instructions, 0.2, seed=1)
    assert len(mixed) == 100
    assert sum(r["id"].startswith("i") for r in mixed) == 20
    assert mix(task, instructions, 0.2, seed=1) == mixed  # deterministic
    assert mix(task, instructions, 0.0) == task


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, raft_ws) -> Path:
    """An index of the (trimmed) paragraphs of the first 12 bundled HotpotQA questions (~120 short chunks)."""
    from ragtune.index.ingest import ingest

    data = trimmed_hotpot(12)
    path = tmp_path_factory.mktemp("corpus") / "hotpot12.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    ingest([path], raft_ws)
    return raft_ws


def test_radit_rows_one_per_retrieved_chunk(small_index):
    """RA-DIT LM-ft: each of the top-k chunks is its own 'Background:' instance with the gold answer as target."""
    from ragtune.retrieve.search import Searcher
    from ragtune.train.data import load_raft, radit_rows

    examples = load_raft(small_index / "synth" / "raft.jsonl")
    searcher = Searcher(small_index)
    rows = radit_rows(examples, lambda q, k: searcher.search(q, k=k), top_k=3)
    assert len(rows) == 3 * len(examples)
    for e in examples:
        mine = [r for r in rows if r["id"].startswith(e.id + ":")]
        assert len(mine) == 3
        backgrounds = {r["prompt"][-1]["content"].split("\n\nQuestion:")[0] for r in mine}
        assert len(backgrounds) == 3  # three different chunks
        for r in mine:
            assert r["prompt"][-1]["content"].startswith("Background: ")
            assert r["prompt"][-1]["content"].endswith(f"Question: {e.question}")
            assert r["completion"] == [{"role": "assistant", "content": e.answer}]


def test_radit_mode_trains(small_index):
    from ragtune.train.config import SFTRunConfig
    from ragtune.train.sft import train_sft

    r = train_sft(small_index, config=SFTRunConfig(data_mode="radit", top_k=2, max_steps=1, **FAST),
                  name="radit", quiet=True)
    assert r.steps == 1 and r.examples >= 2 * 8 and Path(r.output, "adapter_model.safetensors").exists()


def test_dap_trains_on_the_indexed_chunks(small_index):
    from ragtune.train.config import DAPRunConfig
    from ragtune.train.dap import train_dap

    r = train_dap(small_index, config=DAPRunConfig(max_steps=1, batch_size=1, grad_accum=1, max_length=128),
                  name="dap", quiet=True)
    assert r.steps == 1 and r.examples > 50  # one row per chunk before packing (~120 chunks)
    assert 100 <= r.tokens <= 128  # one packed row of max_length tokens, no padding
    assert Path(r.output, "adapter_model.safetensors").exists()


def test_dpo_continues_the_sft_adapter(raft_ws, sft_result, tmp_path):
    import torch
    from safetensors.torch import load_file

    from ragtune.train.config import DPORunConfig
    from ragtune.train.dpo import train_dpo

    prefs = tmp_path / "prefs.jsonl"
    pairs = [
        ("Who wrote Maria Golovin?", "Gian Carlo Menotti", "Giacomo Puccini"),
        ("Which country is Scott Derrickson from?", "the United States", "France"),
        ("Is the Eiffel Tower in Paris?", "yes", "no"),
        ("When was the Eiffel Tower completed?", "1889", "1920"),
    ]
    prefs.write_text("".join(json.dumps({"prompt": q, "chosen": c, "rejected": r}) + "\n" for q, c, r in pairs))
    r = train_dpo(raft_ws, data_path=prefs, name="dpo", quiet=True,
                  config=DPORunConfig(max_steps=1, batch_size=2, grad_accum=1, max_length=256, lr=1e-4,
                                      adapter=sft_result.output))
    assert r.steps == 1 and r.examples == 4 and r.output_kind == "adapter"
    before = load_file(str(Path(sft_result.output) / "adapter_model.safetensors"))
    after = load_file(str(Path(r.output) / "adapter_model.safetensors"))
    assert set(before) == set(after)  # the same adapter, trained further
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(raft_ws):
    """`accelerate launch` with two processes on the CPU (DDP over gloo) trains one adapter, written once."""
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ragtune", "train", "sft",
           "--workspace", str(raft_ws), "--name", "ddp", "--max-steps", "2", "--json", *CLI_FAST]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # only rank 0 prints: one JSON document
    assert summary["world_size"] == 2 and summary["distributed_backend"] == "gloo"
    assert summary["steps"] == 2
    assert Path(summary["output"], "adapter_model.safetensors").exists()


def test_evidence_short_cot_is_quotes_then_answer(raft_ws):
    """`--cot evidence-short`: only the gold sentences, quoted, then the answer; every quote is in an oracle."""
    from ragtune.prompts import shown_text
    from ragtune.synth.store import read_raft

    examples = read_raft(raft_ws / "synth" / "raft.jsonl")
    assert examples
    for e in examples:
        body, answer = e.cot_answer.rsplit("\n<ANSWER>: ", 1)
        assert answer == e.answer
        assert body.startswith("##begin_quote##") and body.endswith("##end_quote##")
        oracles = [d for d in e.documents if d.is_oracle] + e.dropped_oracles  # P < 1: some oracles are not shown
        oracle_text = " ".join(shown_text(d) for d in oracles)
        for quote in body.split("##end_quote##")[:-1]:
            assert quote.strip().removeprefix("##begin_quote##") in oracle_text


def test_retrained_adapter_is_not_served_stale_answers(tmp_path):
    """Evaluation resumes by signature; retraining into the same adapter folder must change that signature."""
    from ragtune.eval.runner import adapter_fingerprint

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"first")
    first = adapter_fingerprint(str(folder))
    (folder / "adapter_model.safetensors").write_bytes(b"second")
    assert first and adapter_fingerprint(str(folder)) != first
    assert adapter_fingerprint(None) == ""


def test_preferences_from_synth_become_trl_rows(tmp_path):
    """`ragtune synth preferences` files (grouped records) load as TRL conversational preference rows, train split."""
    from ragtune.synth.records import Group, PreferenceExample
    from ragtune.synth.store import GroupFile
    from ragtune.train.data import load_preferences

    prompt = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Question: 2+2?"}]
    path = tmp_path / "preferences.jsonl"
    with GroupFile(path) as f:
        for i, split in enumerate(("train", "eval", "train")):
            pref = PreferenceExample(id=f"p{i}", example_id=f"e{i}", messages=prompt, chosen="<ANSWER>: 4",
                                     rejected="<ANSWER>: 5", reason="wrong answer", split=split)
            f.append(Group(group_id=f"g{i}", examples=[pref.model_dump()]))
    rows = load_preferences(path)
    assert len(rows) == 2  # the eval-split pair is held out
    assert rows[0] == {"prompt": prompt, "chosen": [{"role": "assistant", "content": "<ANSWER>: 4"}],
                       "rejected": [{"role": "assistant", "content": "<ANSWER>: 5"}]}
