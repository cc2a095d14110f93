"""Two ways to make fp32 inference on a CPU with native bf16 faster while keeping its answers.

Why not plain bf16: on this project's EPYC (AVX512-BF16) a bf16 SmolLM2 generates about 2.1x faster than fp32, but
its answers drift: 8 of 16 HotpotQA answers differed from fp32's (greedy, same prompts), because every layer rounds
the residual stream to 8 bits of mantissa and the errors add up over 30 layers. The two modes here keep the parts
that accumulate in fp32:

- `fast_fp32_prefill(model)`: the prompt pass (many tokens at once, compute-bound) runs its fp32 matmuls through
  oneDNN's bf16 math mode (`torch.backends.mkldnn.matmul.fp32_precision = "bf16"`), which splits each fp32 operand
  into bf16 parts and keeps fp32-grade accuracy (max error 1.2e-4 vs 6.0e-5 for MKL's sgemm on a 5600x576x1536
  product, against 0.45 for a real bf16 product) at 1.8x the speed. Decoding steps (one token, memory-bound) keep the
  default kernels, which are faster there. Answers: 16 of 16 identical to plain fp32.
- `mixed_bf16(model)`: every linear layer keeps its weight in bf16 and multiplies in bf16, but its input arrives and
  its output leaves in fp32, so norms, attention, the residual stream and the logits stay fp32. Weights read per
  decoding step halve; the prompt pass runs bf16 matmuls. Answers: 13 of 16 identical to fp32 (plain bf16: 8 of 16).

Both are measured, against plain fp32 and bf16 on the same questions, in benchmarks/eval_throughput.py.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def has_onednn_bf16_math() -> bool:
    """Whether this torch build lets fp32 matmuls use oneDNN's bf16 math mode (torch >= 2.7 on x86 CPUs)."""
    import torch

    matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return matmul is not None and hasattr(matmul, "fp32_precision")


# A bf16x3-style product stays within ~2e-4 of float64 on the probe below; a single-pass bf16 product is off by ~0.4.
PROBE_MAX_ERROR = 1e-2
# (rows, inner, outer) of the products a small decoder's prompt pass runs: q/k/v/o, MLP up and down.
_PROBE_SHAPES = ((160, 576, 576), (160, 576, 1536), (160, 1536, 576))
_probe_result: tuple[bool, float] | None = None


def bf16_math_error() -> float:
    """Largest absolute error, against float64, of fp32 products run in oneDNN's bf16 math mode on this host.

    Why measure instead of trusting the flag: what the mode does is the kernel's choice. On an EPYC with
    AVX512-BF16 oneDNN splits each operand into bf16 parts (error 1.5e-4, like sgemm's 6e-5); on another host or
    oneDNN build the same setting ran single-pass bf16 products and moved SmolLM2's logits by 0.39, which flips
    greedy answers. The probe costs a few milliseconds and is run once per process."""
    import torch

    matmul: Any = getattr(torch.backends.mkldnn, "matmul")  # noqa: B009 - absent from torch's type stubs
    generator = torch.Generator().manual_seed(0)
    saved = matmul.fp32_precision
    worst = 0.0
    try:
        for rows, inner, outer in _PROBE_SHAPES:
            a = torch.randn(rows, inner, generator=generator)
            b = torch.randn(outer, inner, generator=generator)
            exact = a.double() @ b.double().T
            matmul.fp32_precision = "bf16"
            with torch.inference_mode():
                got = torch.nn.functional.linear(a, b)
            worst = max(worst, (got.double() - exact).abs().max().item())
    finally:
        matmul.fp32_precision = saved
    return worst


def bf16_math_keeps_fp32_accuracy() -> tuple[bool, float]:
    """(accurate, measured error): whether oneDNN's bf16 math mode keeps fp32-grade products on this host (cached)."""
    global _probe_result
    if _probe_result is None:
        error = bf16_math_error() if has_onednn_bf16_math() else float("inf")
        _probe_result = (error < PROBE_MAX_ERROR, error)
    return _probe_result


# fp32-grade prompt passes move SmolLM2's logits by ~1e-4; single-pass bf16 products move them by ~0.4.
MODEL_MAX_SHIFT = 5e-2


def logits_shift_in_bf16_math(model: Any) -> float | None:
    """Largest change of `model`'s logits on a fixed 2 x 64-token prompt pass when its fp32 matmuls run in oneDNN's
    bf16 math mode; None for a model this cannot probe (no `config.vocab_size`, no `.logits`). The host probe checks
    the kernels on random matrices; this one checks them on the weights and shapes that will actually run, once per
    loaded model (two short forward passes)."""
    import torch

    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 2:
        return None
    matmul: Any = getattr(torch.backends.mkldnn, "matmul")  # noqa: B009 - absent from torch's type stubs
    ids = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))
    try:
        ids = ids.to(next(model.parameters()).device)
    except StopIteration:
        return None
    saved = matmul.fp32_precision
    try:
        with torch.inference_mode():
            matmul.fp32_precision = "ieee"
            ref = getattr(model(input_ids=ids), "logits", None)
            matmul.fp32_precision = "bf16"
            got = getattr(model(input_ids=ids), "logits", None)
    finally:
        matmul.fp32_precision = saved
    if ref is None or got is None:
        return None
    return float((got.float() - ref.float()).abs().max().item())


def fast_fp32_prefill(model: Any) -> bool:
    """Run `model`'s multi-token forward passes (prompt prefill, log-likelihood scoring) in oneDNN's bf16 math mode
    and its one-token decoding steps in the default fp32 kernels. Returns False (and changes nothing) where the torch
    build lacks the switch, where the mode's products on this host are not fp32-grade (`bf16_math_error`) or where
    it moves this model's logits (`logits_shift_in_bf16_math`): a faster prompt pass is only worth having when the
    answers stay fp32's. The switch is process-wide: it is set for the length of each forward pass and restored
    after it (also when the pass raises), so another model in the process keeps its own kernels."""
    if not has_onednn_bf16_math():
        return False
    accurate, error = bf16_math_keeps_fp32_accuracy()
    if not accurate:
        log.info("fast fp32 prefill off: oneDNN's bf16 math mode is off by %.3g on this host (limit %g)", error,
                 PROBE_MAX_ERROR)
        return False
    shift = logits_shift_in_bf16_math(model)
    if shift is not None and shift >= MODEL_MAX_SHIFT:
        log.info("fast fp32 prefill off: it moves this model's logits by %.3g (limit %g)", shift, MODEL_MAX_SHIFT)
        return False
    import torch

    matmul: Any = getattr(torch.backends.mkldnn, "matmul")  # noqa: B009 - absent from torch's type stubs
    saved: list[str] = []

    def pick_kernels(module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        many = ids is not None and ids.dim() >= 2 and ids.shape[1] > 1
        saved.append(matmul.fp32_precision)
        matmul.fp32_precision = "bf16" if many else "ieee"

    def restore(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if saved:  # the process-wide switch goes back to what it was, so other models see their own setting
            matmul.fp32_precision = saved.pop()

    model.register_forward_pre_hook(pick_kernels, with_kwargs=True)
    model.register_forward_hook(restore, with_kwargs=True, always_call=True)
    return True


def mixed_bf16(model: Any) -> Any:
    """Cast every `nn.Linear` of `model` to bf16 weights with fp32 input and output, in place; embeddings, norms and
    everything else stay fp32. A language-model head tied to the input embeddings is untied first (the head gets its
    own bf16 copy), so token embeddings keep fp32 precision."""
    import torch
    import torch.nn.functional as F

    class MixedBf16Linear(torch.nn.Linear):
        """A linear layer whose weight is bf16 while the activations around it stay in their own dtype."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see the class docstring
            bias = self.bias
            return F.linear(x.to(torch.bfloat16), self.weight, bias).to(x.dtype)

    head = getattr(model, "lm_head", None)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is not None and embed is not None and head.weight is embed.weight:
        head.weight = torch.nn.Parameter(embed.weight.detach().clone(), requires_grad=False)
        if hasattr(model, "config"):
            model.config.tie_word_embeddings = False
    for module in list(model.modules()):
        if type(module) is torch.nn.Linear:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(torch.bfloat16)
            module.__class__ = MixedBf16Linear
    return model
