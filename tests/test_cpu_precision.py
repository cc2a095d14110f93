"""The CPU precision modes keep fp32's answers where plain bf16 does not (ragtune.llm.cpu_precision)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ragtune.llm.cpu_precision import (  # noqa: E402
    bf16_math_keeps_fp32_accuracy,
    fast_fp32_prefill,
    has_onednn_bf16_math,
    mixed_bf16,
)
from ragtune.llm.transformers_backend import resolve_dtype  # noqa: E402
from ragtune.models import resolve_generator  # noqa: E402


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    path = resolve_generator().path
    fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    mixed = mixed_bf16(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval())
    bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    return fp32, mixed, bf16


def test_mixed_keeps_activations_fp32_and_embeddings_untied(models):
    fp32, mixed, _ = models
    linears = [m for m in mixed.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert mixed.get_input_embeddings().weight.dtype == torch.float32
    assert mixed.lm_head.weight is not mixed.get_input_embeddings().weight
    ids = torch.randint(100, 20000, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = mixed(ids).logits
    assert out.dtype == torch.float32


def test_mixed_is_much_closer_to_fp32_than_bf16(models):
    fp32, mixed, bf16 = models
    ids = torch.randint(100, 20000, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = fp32(ids).logits
        err_mixed = (mixed(ids).logits - ref).abs().mean().item()
        err_bf16 = (bf16(ids).logits.float() - ref).abs().mean().item()
    assert err_mixed < 0.6 * err_bf16, (err_mixed, err_bf16)


@pytest.mark.skipif(not has_onednn_bf16_math(), reason="this torch build has no oneDNN fp32 math-mode switch")
def test_fast_prefill_switches_kernels_by_pass_and_keeps_logits(models):
    from transformers import AutoModelForCausalLM

    accurate, error = bf16_math_keeps_fp32_accuracy()
    if not accurate:  # this host's kernels run single-pass bf16 products: the gate must refuse (tested below)
        pytest.skip(f"oneDNN's bf16 math mode is off by {error:.3g} on this host, so fast prefill stays off here")
    fp32 = models[0]
    fast = AutoModelForCausalLM.from_pretrained(resolve_generator().path, dtype=torch.float32).eval()
    assert fast_fp32_prefill(fast)
    ids = torch.randint(100, 20000, (2, 80), generator=torch.Generator().manual_seed(2))
    matmul = torch.backends.mkldnn.matmul
    seen: list[str] = []
    probe = fast.model.layers[0].register_forward_pre_hook(lambda *a: seen.append(matmul.fp32_precision))
    try:
        with torch.inference_mode():
            ref = fp32(ids).logits  # the plain model has no hook: default kernels
            matmul.fp32_precision = "ieee"
            got = fast(input_ids=ids).logits
            fast(input_ids=ids[:, :1])
        assert seen == ["bf16", "ieee"]  # a prompt pass ran in the bf16 math mode, a one-token step did not
        assert matmul.fp32_precision == "ieee"  # and the process-wide switch was restored after each pass
    finally:
        probe.remove()
        matmul.fp32_precision = "ieee"
    # fp32-grade: the probe that let the switch on predicts the model's logits (bf16 products move them by ~0.4)
    assert (got - ref).abs().max().item() < 5e-2, error


@pytest.mark.skipif(not has_onednn_bf16_math(), reason="this torch build has no oneDNN fp32 math-mode switch")
def test_the_probe_separates_fp32_grade_products_from_single_pass_bf16(monkeypatch):
    """The probe's verdict on this host is one side of the limit, and a host whose kernels round to bf16 (faked by
    the cached verdict, since no such host is here) gets no hooks: its model keeps the default kernels."""
    from ragtune.llm import cpu_precision

    error = cpu_precision.bf16_math_error()
    assert error < 1e-3 or error > 5e-2  # bf16x3-grade (1.5e-4) or single-pass (0.4): never near the limit
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    monkeypatch.setattr(cpu_precision, "_probe_result", (False, 0.39))
    assert not fast_fp32_prefill(model)
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_mixed_dtype_name_resolves_for_cache_keys():
    assert resolve_dtype("mixed", "cpu") == "mixed-bf16"
    assert resolve_dtype("mixed-bf16", "cpu") == "mixed-bf16"
    with pytest.raises(ValueError):
        resolve_dtype("int3", "cpu")
