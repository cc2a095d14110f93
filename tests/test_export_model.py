"""`ragtune export-model`: a merged folder answers as base + adapter, the model card says what the model was trained on
and how it scored, the Ollama Modelfile carries the chat template and the RAFT format, and an exported GGUF answers as
transformers does (when llama.cpp's converter and llama-cpp-python are on this machine)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from ragtune.llm import GenerationConfig, load_llm
from ragtune.train.export_model import ExportError, export_model, modelfile, ollama_template

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Say hello."}],
    [{"role": "system", "content": "Answer in as few words as you can."},
     {"role": "user", "content": "Context: Paris is the capital of France. Berlin is the capital of Germany.\n"
                                 "Question: What is the capital of Germany?"}],
]
GREEDY = GenerationConfig(max_new_tokens=16)


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory) -> Path:
    """A workspace laid out as `ragtune train sft` leaves it (ws/train/NAME/adapter + manifest.json), holding an
    all-linear r=8 LoRA with small random B (a synthetic stand-in for a trained adapter: the shape and scale of a
    short fine-tune, made in a second instead of minutes), and a report.json in `ragtune compare`'s format."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.models import resolve_generator

    torch.manual_seed(0)
    base_path = resolve_generator().path
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 5e-3)
    ws = tmp_path_factory.mktemp("ws")
    run = ws / "train" / "demo"
    model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(base_path).save_pretrained(run / "adapter")
    data = ws / "synth" / "raft.jsonl"
    (run / "manifest.json").write_text(json.dumps({
        "stage": "train-demo", "inputs": {str(data): "ab" * 32},
        "config": {"method": "lora", "lora": {"r": 8, "target_modules": "all-linear"}, "max_steps": 100, "seed": 0,
                   "data_mode": "raft", "system_prompt": None},
        "counts": {"examples": 150, "steps": 100, "tokens": 60000},
        "extra": {"base_model": "/elsewhere/.cache/ragtune/models/smollm2-135m-instruct"},
    }), encoding="utf-8")
    (ws / "report").mkdir()
    (ws / "report" / "report.json").write_text(json.dumps({"systems": [
        {"name": "base short", "system": {"adapter": None}, "scores": {"em": 0.2, "f1": 0.31, "n": 47}},
        {"name": "tuned cot", "system": {"adapter": str(run / "adapter")},
         "scores": {"em": 0.34, "f1": 0.456, "f1_ci_low": 0.38, "f1_ci_high": 0.53, "n": 47}},
    ]}), encoding="utf-8")
    return run / "adapter"


@pytest.mark.slow
def test_merged_export_answers_as_base_plus_adapter(adapter_run, tmp_path):
    result = export_model(adapter_run, "merged", tmp_path / "merged")
    out = Path(result.out)
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (out / "tokenizer_config.json").read_text())
    assert not list(out.glob("adapter_*")), "a merged folder holds plain weights, not the adapter"
    card = (out / "README.md").read_text()
    assert "raft.jsonl" in card and "ab" * 32 in card and "examples 150" in card and "LoRA r 8" in card
    assert "| tuned cot |" in card and "45.6" in card and "[38.0, 53.0]" in card  # the before/after table
    exported = load_llm(str(out))
    reference = load_llm(adapter=str(adapter_run))  # unmerged PeftModel, fp32
    assert [g.text for g in exported.generate(PROMPTS, GREEDY)] == [g.text for g in reference.generate(PROMPTS, GREEDY)]


def test_export_refuses_what_it_cannot_do(adapter_run, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="unknown format"):
        export_model(adapter_run, "onnx", tmp_path / "x")
    with pytest.raises(ExportError, match="not a LoRA adapter folder"):
        export_model(tmp_path, "merged", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_model(adapter_run, "merged", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="unknown --quant"):
        export_model(adapter_run, "gguf", tmp_path / "g", quant="q3")
    from ragtune.llm.gguf import ConverterNotFoundError

    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    empty = tmp_path / "no-llama-cpp"
    empty.mkdir()
    if importlib.util.find_spec("llama_cpp") is None or not _vendored_converter():
        with pytest.raises(ConverterNotFoundError, match="LLAMA_CPP_DIR"):
            export_model(adapter_run, "gguf", tmp_path / "g", llama_cpp_dir=empty)
        assert not (tmp_path / "g").exists(), "a refused export leaves nothing behind"


def _vendored_converter() -> bool:
    from ragtune.llm.gguf import find_tools

    return find_tools(required=False) is not None


def test_modelfile_has_the_template_the_raft_format_and_stops(adapter_run):
    from ragtune.prompts import ANSWER_TAG, STUDENT_SYSTEM

    chat_template = (adapter_run / "chat_template.jinja").read_text()
    text = modelfile("demo-q8_0.gguf", chat_template, STUDENT_SYSTEM)
    lines = text.splitlines()
    assert "FROM ./demo-q8_0.gguf" in lines
    assert 'TEMPLATE """' in text and "<|im_start|>{{ .Role }}" in text and "{{ .System }}" in text
    assert f'SYSTEM """{STUDENT_SYSTEM}"""' in text and ANSWER_TAG in text
    assert 'PARAMETER stop "<|im_end|>"' in lines and "PARAMETER temperature 0" in lines
    llama3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}"
    assert "<|eot_id|>" in ollama_template(llama3)[1]
    with pytest.raises(ExportError, match="TEMPLATE by hand"):
        ollama_template("{{ messages[0]['content'] }}")


converter_dir = os.environ.get("LLAMA_CPP_DIR", "")
needs_gguf_tools = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or not converter_dir
    or not Path(converter_dir, "convert_hf_to_gguf.py").is_file(),
    reason="needs llama-cpp-python (pip install llama-cpp-python) and LLAMA_CPP_DIR=<llama.cpp checkout> with "
    "convert_hf_to_gguf.py (and pip install gguf sentencepiece)",
)


@pytest.mark.slow
@needs_gguf_tools
def test_ollama_export_gguf_answers_as_transformers(adapter_run, tmp_path):
    """The f16 GGUF of the merged model, run by llama.cpp, gives transformers' greedy answers on the demo prompts
    (the issue's bar: at least 18 of 20; these are the prompts that fit in a CPU test)."""
    from ragtune.llm.llamacpp_backend import LlamaCppLLM

    result = export_model(adapter_run, "ollama", tmp_path / "ollama", quant="f16")
    out = Path(result.out)
    assert result.gguf and Path(result.gguf).is_file() and (out / "Modelfile").is_file()
    assert f"FROM ./{Path(result.gguf).name}" in (out / "Modelfile").read_text()
    prompts = PROMPTS + [[{"role": "user", "content": q}] for q in (
        "Name a primary colour.", "What is 2 + 2?", "Who wrote Romeo and Juliet?", "What is the boiling point of "
        "water in Celsius?", "Translate 'thank you' into French.")]
    config = GenerationConfig(max_new_tokens=24)
    gguf = LlamaCppLLM(result.gguf)
    reference = load_llm(adapter=str(adapter_run), merge_adapter=True)
    got = [g.text for g in gguf.generate(prompts, config)]
    want = [g.text for g in reference.generate(prompts, config, batch_size=1)]
    same = sum(a == b for a, b in zip(got, want, strict=True))
    assert same >= len(prompts) - 1, list(zip(got, want, strict=True))


needs_converter = pytest.mark.skipif(
    not converter_dir or not Path(converter_dir, "convert_hf_to_gguf.py").is_file()
    or importlib.util.find_spec("gguf") is None or importlib.util.find_spec("sentencepiece") is None,
    reason="needs LLAMA_CPP_DIR=<llama.cpp checkout> with convert_hf_to_gguf.py, and pip install gguf sentencepiece",
)


@pytest.mark.slow
@needs_converter
def test_gguf_export_holds_the_merged_weights_and_the_chat_template(adapter_run, tmp_path):
    """Without llama-cpp-python: the GGUF llama.cpp's converter wrote is read back with the `gguf` package."""
    import numpy as np
    from gguf import GGUFReader

    result = export_model(adapter_run, "gguf", tmp_path / "gguf", quant="q8_0")
    assert result.gguf and result.gguf.endswith("demo-q8_0.gguf") and (tmp_path / "gguf" / "README.md").is_file()
    reader = GGUFReader(result.gguf)
    fields = reader.fields
    text = lambda f: bytes(fields[f].parts[fields[f].data[0]]).decode()  # noqa: E731
    assert text("general.architecture") == "llama" and "<|im_start|>" in text("tokenizer.chat_template")
    from gguf.quants import dequantize

    from ragtune.llm.transformers_backend import load_model
    from ragtune.train.export_model import read_run, resolve_base

    model, _ = load_model(resolve_base(read_run(adapter_run), None), str(adapter_run), "cpu", "float32",
                          merge_adapter=True)  # what the export merged (cached in this process)
    want = model.model.layers[0].self_attn.v_proj.weight.detach().numpy()  # v is not permuted for RoPE
    v = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight")
    assert v.tensor_type.name == "Q8_0"
    got = dequantize(v.data, v.tensor_type).reshape(want.shape)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()  # 8-bit blocks: within 2% of the range


def test_export_model_command_reports_errors_cleanly(tmp_path):
    from typer.testing import CliRunner

    from ragtune.cli import app

    result = CliRunner().invoke(app, ["export-model", "--adapter", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a LoRA adapter folder" in result.output
    assert "--format" in CliRunner().invoke(app, ["export-model", "--help"]).output
