"""The llama.cpp engine on the bundled SmolLM2 GGUF: greedy answers, stop strings, streaming pieces, cancel, and
log-likelihoods that agree with transformers' (the same weights de-quantised), when llama-cpp-python is installed."""

from __future__ import annotations

import importlib.util

import pytest

from ragtune.llm import GenerationConfig, load_llm

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
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


def test_greedy_answers_are_deterministic_and_mostly_those_of_transformers(llm):
    config = GenerationConfig(max_new_tokens=24)
    first = [g.text for g in llm.generate(PROMPTS, config)]
    assert first == [g.text for g in llm.generate(PROMPTS[::-1], config)][::-1]  # order / cache reuse change nothing
    assert "Paris" in first[0] and "Berlin" in first[2]
    reference = [g.text for g in load_llm().generate(PROMPTS, config, batch_size=1)]
    assert sum(a == b for a, b in zip(first, reference, strict=True)) >= 2, (first, reference)
    gen = llm.generate(PROMPTS[:1], config)[0]
    assert gen.prompt_tokens > 10 and 0 < gen.completion_tokens <= 24 and gen.finish_reason in ("stop", "length")


def test_stop_strings_cut_the_answer_and_max_tokens_bounds_it(llm):
    whole = llm.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=24))[0].text
    word = whole.split()[2]
    cut = llm.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=24, stop=[word]))[0]
    assert cut.text == whole[: whole.index(word)].strip() and cut.finish_reason == "stop"
    short = llm.generate(PROMPTS[1:2], GenerationConfig(max_new_tokens=3))[0]
    assert short.completion_tokens == 3 and short.finish_reason == "length"


def test_streamed_pieces_concatenate_to_the_answer_and_cancel_stops_it(llm):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    outs = llm.generate_stream(PROMPTS[:2], lambda i, p: pieces[i].append(p), GenerationConfig(max_new_tokens=24))
    for i, gen in enumerate(outs):
        assert "".join(pieces[i]) == gen.text and len(pieces[i]) > 1
    seen: list[str] = []
    stopped = llm.generate_stream(PROMPTS[:1], lambda i, p: seen.append(p), GenerationConfig(max_new_tokens=64),
                                  cancelled=lambda i: len(seen) >= 2)[0]
    assert stopped.finish_reason == "cancelled" and stopped.completion_tokens < 64


def test_loglikelihood_agrees_with_transformers_and_ranks_the_right_answer(llm):
    question = PROMPTS[2]
    requests = [(question, "Berlin"), (question, "Paris"), (question, "The capital of Germany is Berlin.")]
    got = llm.loglikelihood(requests)
    want = load_llm().loglikelihood(requests)
    assert got[0] > got[1]  # the right answer is the likelier one, as in transformers
    for g, w in zip(got, want, strict=True):
        assert g < 0 and abs(g - w) < 0.15 * abs(w) + 0.3, (got, want)  # same weights; different kernels
    yes_no = llm.choice_logprobs([question], ["yes", "no"])[0]
    assert len(yes_no) == 2 and all(x < 0 for x in yes_no)
    assert llm.capabilities.loglikelihood and llm.capabilities.streaming and llm.capabilities.cancel
