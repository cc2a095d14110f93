"""The local transformers backend on the bundled SmolLM2 (GGUF converted once): left-padded batches give the same
greedy text as single prompts, log-likelihoods count only the continuation, LoRA adapters load through peft."""

from __future__ import annotations

import pytest

from ragtune.llm import GenerationConfig, load_llm
from ragtune.llm.transformers_backend import TransformersLLM

SHORT = [{"role": "user", "content": "Say hello."}]
LONG = [
    {"role": "system", "content": "You are a terse assistant. Answer in as few words as you can."},
    {
        "role": "user",
        "content": "Here is some context that makes this prompt much longer than the other one. "
        "What is the capital of France?",
    },
]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llm() -> TransformersLLM:
    model = load_llm()
    assert isinstance(model, TransformersLLM)
    return model


def test_cached_per_process(llm):
    again = load_llm("smollm2-135m-instruct")
    assert again.model is llm.model


def test_batched_generation_matches_single(llm):
    config = GenerationConfig(max_new_tokens=6)
    batched = llm.generate([LONG, SHORT], config, batch_size=2)
    alone = llm.generate([SHORT], config)
    assert batched[1].text == alone[0].text  # left padding does not change the short prompt's greedy output
    assert batched[0].prompt_tokens > batched[1].prompt_tokens
    assert all(0 < g.completion_tokens <= 6 for g in batched)
    assert llm.usage.requests >= 3


def test_stop_strings(llm):
    out = llm.generate(
        [[{"role": "user", "content": "Count from 1 to 20, separated by commas."}]],
        GenerationConfig(max_new_tokens=8, stop=["2"]),
    )[0]
    assert "2" not in out.text and out.finish_reason == "stop"


def test_loglikelihood_counts_only_the_continuation(llm):
    requests = [
        (QUESTION, "The capital of France is Paris."),
        (QUESTION, "The capital of France is Berlin."),
        (QUESTION, " Paris"),
        (QUESTION, " Paris is nice, and Berlin too."),
        (SHORT, ""),
    ]
    paris, berlin, a, ab, empty = llm.loglikelihood(requests, batch_size=8)
    assert llm.loglikelihood(requests[:1], batch_size=1)[0] == pytest.approx(paris, abs=2e-3)  # padding-free
    assert berlin < paris < 0  # Paris is likelier than Berlin
    assert ab < a < 0  # a longer continuation adds (negative) terms: p(A B) <= p(A)
    assert empty == 0.0


def test_lora_adapter(llm, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llm.path, dtype=torch.float32)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    tuned = load_llm(adapter=str(tmp_path / "adapter"))
    assert isinstance(tuned.model, PeftModel)
    request = [(QUESTION, "The capital of France is Paris.")]
    assert tuned.loglikelihood(request)[0] != pytest.approx(llm.loglikelihood(request)[0], abs=1e-3)
    assert tuned.model is not llm.model


def test_streamed_pieces_concatenate_to_the_batched_generation(llm):
    """`generate_stream` reports text per row of a padded batch while decoding, cut and stripped the way `generate`
    cuts the final text (stop strings included), without changing any row's output."""
    convs = [LONG, [{"role": "user", "content": "Count from 1 to 20, separated by commas."}], SHORT]
    for config in (GenerationConfig(max_new_tokens=10), GenerationConfig(max_new_tokens=10, stop=["4"])):
        plain = llm.generate(convs, config, batch_size=3)
        pieces: dict[int, list[str]] = {i: [] for i in range(len(convs))}
        streamed = llm.generate_stream(convs, lambda i, piece, got=pieces: got[i].append(piece), config, batch_size=3)
        assert [g.text for g in streamed] == [g.text for g in plain]
        assert ["".join(pieces[i]) for i in range(len(convs))] == [g.text for g in plain]
        assert len(pieces[1]) > 2 and all(pieces[1])  # token by token, never an empty piece
    assert "4" not in "".join(pieces[1])  # the stop string (and anything after it) never went out


def test_a_cancelled_job_stops_generating_and_frees_its_batch(llm):
    """A caller that goes away (a closed stream) sets its job's cancel event: generation for that row stops at the
    next token, the job's future raises CancelledError (no cut answer is handed on), and its batch neighbour still
    gets its full answer. Sampling at temperature 2 keeps the cancelled row talking for all its tokens otherwise."""
    import threading
    import time
    from concurrent.futures import CancelledError

    from ragtune.llm.server import Batcher

    batcher = Batcher(llm, max_batch=4, batch_wait_ms=200)
    cancel, pieces = threading.Event(), []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        cancel.set()  # give up after the first piece

    long_run = GenerationConfig(max_new_tokens=200, temperature=2.0, seed=0)
    t0 = time.perf_counter()
    gone = batcher.submit([{"role": "user", "content": "Tell me a very long story."}], long_run, on_text, cancel)
    kept = batcher.submit(QUESTION, long_run)  # same config: the same batch
    with pytest.raises(CancelledError):
        gone.result(timeout=120)
    assert len(pieces) <= 3 and batcher.cancelled == 1
    answer = kept.result(timeout=300)
    assert answer.finish_reason in ("stop", "length") and answer.completion_tokens > len(pieces)
    # a job cancelled before its batch starts never reaches the model
    early = threading.Event()
    early.set()
    batches = batcher.batches
    with pytest.raises(CancelledError):
        batcher.submit(QUESTION, GenerationConfig(max_new_tokens=4), cancel=early).result(timeout=30)
    assert batcher.batches == batches and batcher.cancelled == 2
    assert time.perf_counter() - t0 < 300
