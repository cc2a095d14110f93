"""Faster inference paths give the answers of the reference path: `auto` dtype resolution, a LoRA merged at load time
vs the unmerged PeftModel, and the CTranslate2 engine vs transformers fp32, on the bundled SmolLM2."""

from __future__ import annotations

import importlib.util

import pytest

from ragtune.llm import GenerationConfig, load_llm, resolve_dtype
from ragtune.llm.hardware import cpu_has_fast_bf16

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Say hello."}],
    [
        {"role": "system", "content": "You are a terse assistant. Answer in as few words as you can."},
        {"role": "user", "content": "Context: Paris is the capital of France. Berlin is the capital of Germany.\n"
                                    "Question: What is the capital of Germany?"},
    ],
]
GREEDY = GenerationConfig(max_new_tokens=24)
needs_ct2 = pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="pip install ctranslate2")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An all-linear r=8 LoRA with small random B (the trainer's adapter shape): it moves log-probs measurably but
    leaves greedy answers mostly as they were, like a short fine-tune."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.models import resolve_generator

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_generator().path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 5e-3)
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(folder)
    return str(folder)


def test_auto_dtype_follows_the_cpu_and_none_stays_exact():
    assert resolve_dtype(None, "cpu") == "float32"  # log-likelihood scoring keeps fp32 unless asked
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_fast_bf16() else "float32")
    assert resolve_dtype("bf16", "cpu") == "bfloat16" and resolve_dtype("fp32", "cpu") == "float32"
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", "cpu")
    llm = load_llm(dtype="auto")
    assert llm.dtype == resolve_dtype("auto", "cpu")
    from ragtune.eval.runner import SystemSpec  # eval keys its answer cache on the resolved name, never on "auto"

    assert SystemSpec(dtype="auto").explicit_dtype == ("bfloat16" if cpu_has_fast_bf16() else None)
    assert SystemSpec().explicit_dtype is None and SystemSpec(dtype="float32").explicit_dtype == "float32"
    assert SystemSpec(model="openai:gpt-4o-mini", dtype="auto").explicit_dtype is None
    with pytest.raises(ValueError, match="unknown engine"):
        load_llm(engine="nonesuch")


def test_merged_lora_answers_as_the_unmerged_adapter(adapter):
    from peft import PeftModel

    unmerged = load_llm(adapter=adapter, dtype="float32")
    merged = load_llm(adapter=adapter, dtype="float32", merge_adapter=True)
    assert isinstance(unmerged.model, PeftModel) and not isinstance(merged.model, PeftModel)
    assert merged.merged and not unmerged.merged
    base = load_llm(dtype="float32")
    requests = [(PROMPTS[0], "The capital of France is Paris.")]
    tuned_ll, merged_ll, base_ll = (m.loglikelihood(requests)[0] for m in (unmerged, merged, base))
    assert merged_ll == pytest.approx(tuned_ll, abs=2e-4)  # the same function ...
    assert abs(tuned_ll - base_ll) > 5e-3  # ... and not the base model's: the adapter is really in the weights
    assert [g.text for g in merged.generate(PROMPTS, GREEDY, batch_size=3)] == [
        g.text for g in unmerged.generate(PROMPTS, GREEDY, batch_size=3)
    ]


@pytest.mark.slow
def test_merged_lora_in_bf16_is_rounded_once(adapter):
    """Merged in fp32, then cast: every weight is bf16 and the answers are the unmerged bf16 adapter's on these
    prompts (bf16 rounding may flip a token on long answers; eval's F1 is compared in the benchmark)."""
    import torch

    merged = load_llm(adapter=adapter, dtype="bfloat16", merge_adapter=True)
    assert all(p.dtype == torch.bfloat16 for p in merged.model.parameters())
    unmerged = load_llm(adapter=adapter, dtype="bfloat16")
    same = sum(a.text == b.text for a, b in zip(merged.generate(PROMPTS, GREEDY), unmerged.generate(PROMPTS, GREEDY),
                                                strict=True))
    assert same >= 2


@needs_ct2
def test_ct2_engine_gives_the_transformers_fp32_answers():
    reference = load_llm(dtype="float32")
    ct2 = load_llm(engine="ct2", compute_type="float32")
    assert [g.text for g in ct2.generate(PROMPTS, GREEDY, batch_size=3)] == [
        g.text for g in reference.generate(PROMPTS, GREEDY, batch_size=3)
    ]
    requests = [(PROMPTS[0], "The capital of France is Paris."), (PROMPTS[0], "Berlin"), (PROMPTS[1], "")]
    got, want = ct2.loglikelihood(requests), reference.loglikelihood(requests)
    assert got == pytest.approx(want, abs=2e-2) and got[2] == 0.0
    cut = ct2.generate([[{"role": "user", "content": "Count from 1 to 20, separated by commas."}]],
                       GenerationConfig(max_new_tokens=12, stop=["3"]))[0]
    assert "3" not in cut.text and cut.text.startswith("1") and cut.finish_reason == "stop"


@needs_ct2
@pytest.mark.slow
def test_ct2_engine_serves_a_lora_merged_before_conversion(adapter):
    tuned = load_llm(adapter=adapter, dtype="float32", merge_adapter=True)
    ct2 = load_llm(engine="ct2", adapter=adapter, compute_type="float32")
    assert ct2.merged
    requests = [(PROMPTS[0], "The capital of France is Paris.")]
    assert ct2.loglikelihood(requests)[0] == pytest.approx(tuned.loglikelihood(requests)[0], abs=2e-2)
    assert [g.text for g in ct2.generate(PROMPTS, GREEDY)] == [g.text for g in tuned.generate(PROMPTS, GREEDY)]
