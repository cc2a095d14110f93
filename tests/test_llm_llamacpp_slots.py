"""Continuous batching on the llama.cpp engine (`SlotEngine`), in process, on the bundled model: concurrent greedy
answers are the one-at-a-time answers, a request joins while others decode, streaming pieces add up to the answer,
cancel and deadlines free the slot, and two LoRA adapters plus the base are served together, each answering as that
model loaded alone."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from ragtune.llm import GenerationConfig, load_llm
from ragtune.llm.server import GenerationTimeout

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed (pip install llama-cpp-python)")

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Say hello."}],
    [{"role": "user", "content": "Name a primary colour."}],
    [{"role": "user", "content": "Who wrote Romeo and Juliet?"}],
]
GREEDY = GenerationConfig(max_new_tokens=16)


@pytest.fixture(scope="module")
def llm():
    return load_llm(engine="llamacpp", max_length=1024)


@pytest.fixture(scope="module")
def engine(llm):
    from ragtune.llm.llamacpp_slots import SlotEngine

    eng = SlotEngine(llm, slots=4, slot_ctx=512, n_batch=64)  # small prefill chunks: prompts span several steps
    yield eng
    eng.close()


def test_concurrent_greedy_answers_are_the_one_at_a_time_answers(llm, engine):
    alone = [g.text for g in llm.generate(PROMPTS, GREEDY)]
    before = engine.steps
    futures = [engine.submit(p, GREEDY) for p in PROMPTS]
    together = [f.result(timeout=120) for f in futures]
    assert [g.text for g in together] == alone
    assert all(g.completion_tokens > 0 and g.prompt_tokens > 10 for g in together)
    assert engine.most_active >= 3  # decoded together, not in turn
    tokens = sum(g.completion_tokens for g in together) + len(together)  # + the end token of each
    assert engine.steps - before < tokens  # fewer steps than tokens: steps carried several sequences


def test_a_request_joins_while_another_decodes_and_streams_its_pieces(engine):
    long_run = GenerationConfig(max_new_tokens=48)
    first_pieces: list[str] = []
    first = engine.submit([{"role": "user", "content": "Tell me a story about a fox."}], long_run,
                          on_text=first_pieces.append)
    while not first_pieces:
        time.sleep(0.01)
    pieces: list[str] = []
    second = engine.submit(PROMPTS[1], GREEDY, on_text=pieces.append).result(timeout=120)
    assert not first.done() or first.result().completion_tokens == 48  # the long one was still running
    assert "".join(pieces) == second.text and len(pieces) > 1
    whole = first.result(timeout=120).text  # its last piece is reported before its future is settled
    assert "".join(first_pieces) == whole


def test_cancel_and_deadline_free_the_slot(engine):
    cancel, seen = threading.Event(), []

    def on_text(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 2:
            cancel.set()

    gone = engine.submit(PROMPTS[1], GenerationConfig(max_new_tokens=200), on_text=on_text, cancel=cancel)
    with pytest.raises(CancelledError):
        gone.result(timeout=60)
    assert len(seen) <= 4 and engine.cancelled >= 1
    late = engine.submit(PROMPTS[1], GenerationConfig(max_new_tokens=200), timeout_s=0.001)
    with pytest.raises(GenerationTimeout):
        late.result(timeout=60)
    assert engine.submit(PROMPTS[0], GREEDY).result(timeout=60).text  # the slots are free again
    with pytest.raises(KeyError, match="no model 'nonesuch'"):
        engine.submit(PROMPTS[0], GREEDY, model="nonesuch")


def test_a_burst_of_requests_all_finish_in_arrival_order_with_one_prompt_read_at_a_time(llm):
    """18 requests at once on 4 slots: every one finishes with its one-at-a-time answer, at most `prefill_slots`
    slots ever read a prompt in the same step (the others keep decoding), requests are admitted in the order they
    came (FIFO: admission = finish - the Generation's seconds, which count from admission), and decoding stays
    batched. A second engine with a cap of 2 reads two prompts at once: the figure is the cap, not a constant 1."""
    from ragtune.llm.llamacpp_slots import SlotEngine

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(18)]
    alone = {i: g.text for i, g in enumerate(llm.generate(PROMPTS, GREEDY))}
    for cap in (1, 2):
        engine = SlotEngine(llm, slots=4, slot_ctx=512, n_batch=64, prefill_slots=cap, prefill_chunk=8)
        try:
            finished: dict[int, float] = {}
            futures = []
            for i, p in enumerate(prompts):
                f = engine.submit(p, GREEDY)
                f.add_done_callback(lambda _f, i=i, done=finished: done.__setitem__(i, time.perf_counter()))
                futures.append(f)
            got = [f.result(timeout=300) for f in futures]
            stats = engine.stats()
        finally:
            engine.close()
        assert [g.text for g in got] == [alone[i % len(PROMPTS)] for i in range(len(prompts))]
        assert stats["admitted"] == len(prompts) and stats["most_reading"] == cap  # the cap, reached, never passed
        assert stats["most_active"] == 4  # while one slot reads its prompt the other three decode
        admitted = [finished[i] - g.seconds for i, g in enumerate(got)]
        assert all(a <= b + 1e-3 for a, b in zip(admitted, admitted[1:], strict=False))  # arrival order


def test_a_queued_request_that_is_cancelled_leaves_the_queue_without_a_slot(llm):
    """Behind a full engine, a request whose caller gives up while it waits is settled at the next step, long before
    a slot would have come free, and the requests behind it still run."""
    from ragtune.llm.llamacpp_slots import SlotEngine

    engine = SlotEngine(llm, slots=1, slot_ctx=512, n_batch=64)
    try:
        started = threading.Event()
        busy = engine.submit([{"role": "user", "content": "Tell me a story about a fox."}],
                             GenerationConfig(max_new_tokens=128), on_text=lambda _piece: started.set())
        assert started.wait(60)
        cancel = threading.Event()
        waiting = engine.submit(PROMPTS[0], GREEDY, cancel=cancel)
        behind = engine.submit(PROMPTS[1], GREEDY)
        assert engine.health(60.0)["queued"] == 2
        cancel.set()
        with pytest.raises(CancelledError):
            waiting.result(timeout=10)
        assert not busy.done()  # settled while the only slot was still busy
        assert behind.result(timeout=120).text and busy.result(timeout=120).completion_tokens > 0
        assert engine.health(60.0) == {"status": "ok", "reason": None, "queued": 0, "busy_s": None}
    finally:
        engine.close()


converter_dir = os.environ.get("LLAMA_CPP_DIR", "")


@pytest.mark.slow
@pytest.mark.skipif(not converter_dir or not Path(converter_dir, "convert_lora_to_gguf.py").is_file(),
                    reason="set LLAMA_CPP_DIR to a llama.cpp checkout to convert a PEFT adapter to a GGUF LoRA")
def test_two_adapters_and_the_base_served_together_answer_as_each_alone(llm, tmp_path_factory):
    """A PEFT adapter folder (converted once) and its GGUF LoRA file under a second name, beside the base: a step
    decodes one adapter's slots, the steps take turns, and each answers as that model loaded alone in llama.cpp."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.llm.llamacpp_backend import resolve_gguf
    from ragtune.llm.llamacpp_slots import SlotEngine
    from ragtune.models import resolve_generator

    torch.manual_seed(1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_generator().path, dtype=torch.float32),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)  # strong enough to change greedy answers
    folder = tmp_path_factory.mktemp("adapter") / "tuned"
    peft.save_pretrained(folder)
    lora = resolve_gguf(None, str(folder)).lora  # the GGUF LoRA; the engine is given the folder and finds the cache
    assert lora is not None
    engine = SlotEngine(llm, slots=6, slot_ctx=512, adapters={"tuned": str(folder), "gguf": str(lora)},
                        base_name="base")
    try:
        assert engine.models == ["base", "tuned", "gguf"]
        futures = {n: [engine.submit(p, GREEDY, model=n) for p in PROMPTS[:3]] for n in ("base", "tuned", "gguf")}
        got = {n: [f.result(timeout=300).text for f in fs] for n, fs in futures.items()}
    finally:
        engine.close()
    base = [g.text for g in llm.generate(PROMPTS[:3], GREEDY)]
    tuned = [g.text for g in load_llm(adapter=str(folder), engine="llamacpp", max_length=512).generate(
        PROMPTS[:3], GREEDY)]
    assert got["base"] == base and got["tuned"] == tuned and got["gguf"] == tuned
    assert tuned != base  # the adapter is applied (and only to its own requests)
