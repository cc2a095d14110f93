"""The llama.cpp engine on the bundled SmolLM2 GGUF: greedy answers, stop strings, streaming pieces, cancel, and
log-likelihoods that agree with transformers' (the same weights de-quantised), when llama-cpp-python is installed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from ragtune.llm import GenerationConfig, load_llm

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (pip install llama-cpp-python)")

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Say hello."}],
    [{"role": "system", "content": "Answer in as few words as you can."},
     {"role": "user", "content": "Context: Paris is the capital of France. Berlin is the capital of Germany.\n"
                                 "Question: What is the capital of Germany?"}],
]


@pytest.fixture(scope="module")
def llm():
    return load_llm(engine="llamacpp", max_length=2048)


# The bundled model is a 4-bit GGUF; run as shipped, llama.cpp rounds activations to 8 bits for its matrix products
# and its greedy answer to the capital of France began "L'Étoile, la Cité" where transformers (the de-quantised
# weights) says "The capital of France is Paris." (first-token logits "The" 25.33 vs "L" 25.24: a near-tie flipped).
# The engine therefore runs it re-encoded at f16 (`gguf_quant="f16"`, the default), which these tests check.


@needs_llama_cpp
def test_greedy_answers_are_deterministic_and_mostly_those_of_transformers(llm):
    config = GenerationConfig(max_new_tokens=24)
    first = [g.text for g in llm.generate(PROMPTS, config)]
    assert first == [g.text for g in llm.generate(PROMPTS[::-1], config)][::-1]  # order / cache reuse change nothing
    reference = [g.text for g in load_llm().generate(PROMPTS, config, batch_size=1)]
    assert "Paris" in first[0] and first[0] == reference[0]  # the answer the 4-bit file as shipped got wrong
    assert sum(a == b for a, b in zip(first, reference, strict=True)) >= 2, (first, reference)
    gen = llm.generate(PROMPTS[:1], config)[0]
    assert gen.prompt_tokens > 10 and 0 < gen.completion_tokens <= 24 and gen.finish_reason in ("stop", "length")


@needs_llama_cpp
def test_stop_strings_cut_the_answer_and_max_tokens_bounds_it(llm):
    whole = llm.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=24))[0].text
    word = whole.split()[2]
    cut = llm.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=24, stop=[word]))[0]
    assert cut.text == whole[: whole.index(word)].strip() and cut.finish_reason == "stop"
    short = llm.generate(PROMPTS[1:2], GenerationConfig(max_new_tokens=3))[0]
    assert short.completion_tokens == 3 and short.finish_reason == "length"


@needs_llama_cpp
def test_streamed_pieces_concatenate_to_the_answer_and_cancel_stops_it(llm):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    outs = llm.generate_stream(PROMPTS[:2], lambda i, p: pieces[i].append(p), GenerationConfig(max_new_tokens=24))
    for i, gen in enumerate(outs):
        assert "".join(pieces[i]) == gen.text and len(pieces[i]) > 1
    seen: list[str] = []
    stopped = llm.generate_stream(PROMPTS[:1], lambda i, p: seen.append(p), GenerationConfig(max_new_tokens=64),
                                  cancelled=lambda i: len(seen) >= 2)[0]
    assert stopped.finish_reason == "cancelled" and stopped.completion_tokens < 64


@needs_llama_cpp
def test_loglikelihood_agrees_with_transformers_and_ranks_the_right_answer(llm):
    question = PROMPTS[0]
    requests = [(question, "Paris"), (question, "Berlin"), (question, "The capital of France is Paris."),
                (PROMPTS[2], "Berlin")]
    got = llm.loglikelihood(requests)
    want = load_llm().loglikelihood(requests)
    assert got[0] > got[1]  # the right answer is the likelier one, as in transformers
    assert sorted(range(4), key=got.__getitem__) == sorted(range(4), key=want.__getitem__)
    for g, w in zip(got, want, strict=True):
        assert g < 0 and abs(g - w) < 0.02 * abs(w) + 0.05, (got, want)  # the same weights at f16: ~0.005 apart
    yes_no = llm.choice_logprobs([question], ["yes", "no"])[0]
    assert len(yes_no) == 2 and all(x < 0 for x in yes_no)
    assert llm.capabilities.loglikelihood and llm.capabilities.streaming and llm.capabilities.cancel


def test_dtype_picks_the_gguf_type_as_it_picks_the_transformers_dtype():
    """One --dtype for every engine: None stays the exact f16, auto is bf16 exactly where transformers' auto is."""
    from ragtune.llm import resolve_dtype
    from ragtune.llm.llamacpp_backend import gguf_type_for

    assert gguf_type_for(None) == "f16"
    assert gguf_type_for("auto") == ("bf16" if resolve_dtype("auto", "cpu") == "bfloat16" else "f16")
    assert gguf_type_for("auto", n_gpu_layers=99) == "f16"  # llama.cpp's GPU kernels: f16
    assert [gguf_type_for(d) for d in ("float32", "fp16", "bfloat16", "bf16")] == ["f32", "f16", "bf16", "bf16"]
    with pytest.raises(ValueError, match="llamacpp engine runs dtype auto"):
        gguf_type_for("mixed-bf16")


@needs_llama_cpp
def test_auto_dtype_runs_a_bf16_gguf_that_mostly_answers_as_exact_transformers():
    """On a CPU with native bf16, `dtype="auto"` re-encodes the bundled model at bf16 (once); its greedy answers are
    mostly the fp32 transformers engine's (benchmarks/llamacpp_types.py: 27 of 30 RAG prompts, where transformers'
    own bf16 gives 21). Elsewhere auto is the f16 default."""
    from gguf import GGUFReader

    from ragtune.llm.llamacpp_backend import gguf_type_for

    fast = load_llm(engine="llamacpp", dtype="auto", max_length=2048)
    want = gguf_type_for("auto")
    assert fast.dtype == f"gguf-{want}" and fast.path.endswith(f"-{want}.gguf")
    types = {t.tensor_type.name for t in GGUFReader(fast.path).tensors}
    assert want.upper() in types and types <= {"BF16", "F16", "F32"}
    config = GenerationConfig(max_new_tokens=24)
    got = [g.text for g in fast.generate(PROMPTS, config)]
    reference = [g.text for g in load_llm().generate(PROMPTS, config, batch_size=1)]
    assert "Paris" in got[0]
    assert sum(a == b for a, b in zip(got, reference, strict=True)) >= 2, (got, reference)


converter_dir = os.environ.get("LLAMA_CPP_DIR", "")


def test_the_bundled_model_is_its_gguf_file_and_a_peft_adapter_is_converted_once(tmp_path, monkeypatch):
    """What the engine would load, resolved without llama-cpp-python: the bundled GGUF itself (no conversion), and a
    PEFT adapter converted once by llama.cpp's convert_lora_to_gguf.py (when LLAMA_CPP_DIR points at llama.cpp)."""
    from ragtune.llm.llamacpp_backend import resolve_gguf
    from ragtune.models import bundled_smollm2_gguf, cache_dir, resolve_generator

    base = resolve_generator().path
    (tmp_path / "models").mkdir()
    os.symlink(base, tmp_path / "models" / Path(base).name)  # the converted bundled folder, not converted again
    monkeypatch.setenv("RAGTUNE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    native = resolve_gguf(None, gguf_quant="native")
    assert native.gguf == bundled_smollm2_gguf() and native.tokenizer_gguf == native.gguf.name and native.lora is None
    if importlib.util.find_spec("llama_cpp") is not None:  # the default: the 4-bit file re-encoded at f16, once
        model = resolve_gguf(None)
        assert model.gguf.parent == tmp_path / "gguf" and model.gguf.name.endswith("-f16.gguf")
        assert model.tokenizer_dir == native.tokenizer_dir and model.tokenizer_gguf == native.tokenizer_gguf
        from gguf import GGUFReader

        types = {t.tensor_type.name for t in GGUFReader(str(model.gguf)).tensors}
        assert types <= {"F16", "F32"} and "F16" in types  # no 4-bit tensor left
        stamp = model.gguf.stat().st_mtime_ns
        assert resolve_gguf(None).gguf.stat().st_mtime_ns == stamp
    else:
        model = native
    with pytest.raises(FileNotFoundError, match="neither a GGUF LoRA file nor a PEFT adapter"):
        resolve_gguf(None, str(tmp_path))
    if not converter_dir or not Path(converter_dir, "convert_lora_to_gguf.py").is_file():
        pytest.skip("set LLAMA_CPP_DIR to a llama.cpp checkout to convert a PEFT adapter")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(tmp_path / "adapter")
    tuned = resolve_gguf(None, str(tmp_path / "adapter"))
    assert tuned.gguf == model.gguf and tuned.lora is not None and tuned.lora.parent == tmp_path / "gguf"
    from gguf import GGUFReader

    reader = GGUFReader(str(tuned.lora))
    kind = reader.fields["general.type"]
    assert bytes(kind.parts[kind.data[0]]).decode() == "adapter"
    assert {t.name for t in reader.tensors} >= {"blk.0.attn_q.weight.lora_a", "blk.0.attn_v.weight.lora_b"}
    stamp = tuned.lora.stat().st_mtime_ns
    assert resolve_gguf(None, str(tmp_path / "adapter")).lora == tuned.lora and tuned.lora.stat().st_mtime_ns == stamp
