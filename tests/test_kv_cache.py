"""The in-place key/value cache gives attention exactly what transformers' concatenating cache gives it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ragtune.llm.kv_cache import cache_kwarg, growing_cache  # noqa: E402
from ragtune.models import resolve_generator  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_generator().path, dtype=torch.float32).eval()


def test_layer_matches_concatenation_through_growth_crop_and_selection(model):
    cache = growing_cache(model)
    assert cache is not None
    layer = cache.layers[0]
    gen = torch.Generator().manual_seed(0)
    ref_k = torch.empty(3, 2, 0, 4)
    ref_v = torch.empty(3, 2, 0, 4)
    pointers = set()
    for step, new in enumerate([150, 1, 1, 1, 60, 1]):  # the prompt, decoding steps, then one that outgrows the room
        k, v = torch.randn(3, 2, new, 4, generator=gen), torch.randn(3, 2, new, 4, generator=gen)
        ref_k, ref_v = torch.cat([ref_k, k], dim=-2), torch.cat([ref_v, v], dim=-2)
        got_k, got_v = layer.update(k, v)
        assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v), step
        assert layer.get_seq_length() == ref_k.shape[-2]
        pointers.add(got_k.data_ptr())
    assert len(pointers) < 6  # the decoding steps wrote into the same buffer instead of copying it
    layer.crop(-5)
    ref_k, ref_v = ref_k[..., :-5, :], ref_v[..., :-5, :]
    k, v = torch.randn(3, 2, 1, 4, generator=gen), torch.randn(3, 2, 1, 4, generator=gen)
    ref_k, ref_v = torch.cat([ref_k, k], dim=-2), torch.cat([ref_v, v], dim=-2)
    got_k, got_v = layer.update(k, v)
    assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v)
    layer.batch_select_indices(torch.tensor([2, 0]))
    ref_k, ref_v = ref_k[[2, 0]], ref_v[[2, 0]]
    k, v = torch.randn(2, 2, 1, 4, generator=gen), torch.randn(2, 2, 1, 4, generator=gen)
    ref_k, ref_v = torch.cat([ref_k, k], dim=-2), torch.cat([ref_v, v], dim=-2)
    got_k, got_v = layer.update(k, v)
    assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v)


def test_greedy_generation_unchanged_on_a_left_padded_batch(model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_generator().path)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    prompts = [
        "The capital of France is",
        "Write one sentence about the sea. The sea is a large body of salt water that",
        "List three colours:",
    ]
    batch = tok(prompts, return_tensors="pt", padding=True)
    kwargs = {"max_new_tokens": 20, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.inference_mode():
        plain = model.generate(**batch, **kwargs)
        grown = model.generate(**batch, **kwargs, **{cache_kwarg(): growing_cache(model)})
    assert torch.equal(plain, grown)
