"""Engines declare what they can do; asking for what one cannot do is an error naming the engine and the capability;
vLLM's arguments are built right on a machine without vLLM (which cannot run here: no GPU)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from ragtune.llm import ENGINES, CapabilityError, GenerationConfig, load_llm
from ragtune.llm.capabilities import ENGINE_CAPABILITIES, Capabilities, capabilities_of, engine_of


def test_every_engine_declares_its_capabilities():
    assert set(ENGINES) <= set(ENGINE_CAPABILITIES)
    assert ENGINE_CAPABILITIES["transformers"].streaming and ENGINE_CAPABILITIES["transformers"].cancel
    assert ENGINE_CAPABILITIES["vllm"].multi_lora and not ENGINE_CAPABILITIES["vllm"].streaming
    assert ENGINE_CAPABILITIES["llamacpp"].loglikelihood and not ENGINE_CAPABILITIES["llamacpp"].multi_lora
    assert all(caps.loglikelihood for caps in ENGINE_CAPABILITIES.values())  # LSR and the LLM reranker run anywhere
    with pytest.raises(ValueError, match="unknown capability"):
        Capabilities().has("telepathy")


def test_missing_capability_is_refused_before_loading_with_engine_and_capability_named():
    with pytest.raises(CapabilityError) as err:
        load_llm(engine="vllm", require=["streaming"])  # refused before vLLM is even imported
    message = str(err.value)
    assert "'vllm'" in message and "streaming" in message and "transformers, llamacpp" in message
    assert isinstance(err.value, NotImplementedError) and err.value.engine == "vllm"
    with pytest.raises(CapabilityError, match="'llamacpp' does not support multi_lora"):
        load_llm(engine="llamacpp", require=["multi_lora"])
    with pytest.raises(CapabilityError, match="'openai' does not support cancel"):
        load_llm("openai:gpt-4o-mini", require=["cancel"], base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="unknown engine"):
        load_llm(engine="nonesuch")


def test_loaded_backends_report_their_engine_and_require_checks():
    from ragtune.llm.ct2_backend import CTranslate2LLM
    from ragtune.llm.openai_backend import OpenAILLM
    from ragtune.llm.transformers_backend import TransformersLLM

    for cls, engine in ((TransformersLLM, "transformers"), (CTranslate2LLM, "ct2"), (OpenAILLM, "openai")):
        llm = object.__new__(cls)  # the class's declarations, without loading a model
        assert engine_of(llm) == engine and capabilities_of(llm) == ENGINE_CAPABILITIES[engine]
    ct2 = object.__new__(CTranslate2LLM)
    ct2.require("loglikelihood")
    with pytest.raises(CapabilityError, match="'ct2' does not support streaming.*needed for serve"):
        ct2.require("loglikelihood", "streaming", purpose="serve")


def test_a_custom_llm_is_judged_by_what_it_overrides():
    from ragtune.llm.base import LLM, Generation

    class Echo(LLM):  # a user's own backend: not in the engine table
        def generate(self, conversations, config=None, batch_size=8):
            return [Generation(text=c[-1]["content"]) for c in conversations]

        def loglikelihood(self, requests, batch_size=8):
            return [0.0 for _ in requests]

    caps = Echo().capabilities
    assert caps.loglikelihood and not caps.streaming and not caps.cancel
    with pytest.raises(CapabilityError, match="'Echo' does not support streaming"):
        Echo().require("streaming")


def _adapter(folder, r: int, rank_pattern: dict | None = None):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": rank_pattern or {}}))
    return str(folder)


def test_vllm_arguments(tmp_path):
    from ragtune.llm.vllm_backend import engine_args, lora_requests, sampling_args

    a = _adapter(tmp_path / "ws" / "train" / "raft-a" / "adapter", 16)
    b = _adapter(tmp_path / "b", 8, {"q_proj": 40})
    adapters = lora_requests([a, b])
    assert [(x.name, x.lora_int_id) for x in adapters] == [("raft-a", 1), ("b", 2)]  # ids start at 1 (0 = no LoRA)
    args = engine_args("/models/base", adapters, dtype="bf16", max_length=2048)
    assert args["enable_lora"] is True and args["max_loras"] == 2 and args["max_lora_rank"] == 64  # 40 -> 64
    assert args["dtype"] == "bfloat16" and args["max_model_len"] == 2048 and args["model"] == "/models/base"
    assert "enable_lora" not in engine_args("/models/base")  # no adapters: no LoRA machinery
    assert engine_args("/m")["dtype"] == "auto"
    with pytest.raises(ValueError, match="unknown dtype"):
        engine_args("/m", dtype="int3")
    with pytest.raises(ValueError, match="two adapters are named"):
        lora_requests([a, a])
    assert [x.name for x in lora_requests({"tuned": a})] == ["tuned"]
    with pytest.raises(FileNotFoundError, match="not a PEFT LoRA"):
        lora_requests([str(tmp_path)])
    greedy = sampling_args(GenerationConfig(max_new_tokens=32, stop=["\n\n"]))
    assert greedy == {"max_tokens": 32, "temperature": 0.0, "top_p": 1.0, "skip_special_tokens": True,
                      "stop": ["\n\n"]}
    sampled = sampling_args(GenerationConfig(temperature=0.7, top_p=0.9, seed=3))
    assert sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9 and sampled["seed"] == 3


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_missing_is_a_clear_error():
    from ragtune.llm.vllm_backend import VLLMLLM

    with pytest.raises(ImportError, match=r"pip install vllm.*--engine transformers, ct2 or llamacpp"):
        VLLMLLM("/models/base")


def test_engine_is_an_eval_and_serve_option_and_part_of_the_system():
    from typer.testing import CliRunner

    from ragtune.cli import app
    from ragtune.eval.runner import SystemSpec

    assert SystemSpec(engine="llamacpp").describe()["engine"] == "llamacpp"
    assert SystemSpec().describe()["engine"] == "transformers"
    assert SystemSpec.from_dict({"name": "q", "engine": "vllm"}).engine == "vllm"  # compare's systems YAML
    result = CliRunner().invoke(app, ["eval", "--data", "hotpotqa", "examples/hotpotqa_demo/hotpotqa_300.json",
                                      "--limit", "1", "--engine", "nonesuch"])
    assert result.exit_code == 2 and "unknown engine 'nonesuch'" in result.output
    for command in (["eval", "--help"], ["compare", "--help"], ["serve", "--help"]):
        assert "--engine" in CliRunner().invoke(app, command).output
