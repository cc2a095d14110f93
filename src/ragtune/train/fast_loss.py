"""Language-model loss on the answer tokens only, without the logits of the prompt.

RAFT rows are mostly prompt (the documents): on the HotpotQA recipe about 85% of the tokens carry label -100. The LM
head of SmolLM2 projects onto 49,152 words, so the full `(tokens, vocab)` logits cost a fifth of the model's forward
FLOPs and, in fp32, more memory than every activation of the network. TRL's fused head avoids keeping them, but on a
CPU (no Triton) it still scores every position, entropy and top-1 included. Here the hidden states are gathered at the
positions whose next-token label is real, and only those rows go through the LM head and the cross-entropy: the same
loss, a fraction of the work. The saving is largest on CPUs; on CUDA TRL's own fused head already does this, so
`install_answer_only_head` is applied only where TRL would score every position.

The patch wraps the base model's `forward` (under PEFT's wrappers, so DDP and PEFT see an ordinary forward call) and is
switched on per call with `answer_only_head=True`; without it the model behaves exactly as before (generation,
evaluation, TRL's own paths).
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class AnswerOnlyOutput:
    """What the answer-only forward returns: the loss and per-batch metrics (over the scored tokens only)."""

    loss: torch.Tensor
    scored_tokens: torch.Tensor  # how many next-token labels were scored
    correct: torch.Tensor  # how many of them were the model's top-1
    entropy_sum: torch.Tensor  # summed entropy of the scored next-token distributions (no gradient)


def install_answer_only_head(model: Any) -> None:
    """Patch `model` (a transformers causal LM, before or after PEFT wrapping) with the answer-only forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_ragtune_answer_only", False):
        return
    previous = base.forward

    @functools.wraps(type(base).forward)
    def forward(self, *args, answer_only_head: bool = False, labels=None, num_items_in_batch=None, **kwargs):
        if not answer_only_head:
            if labels is not None:
                kwargs["labels"] = labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        return answer_only_loss(hidden, labels, self.get_output_embeddings(), num_items_in_batch)

    base.forward = types.MethodType(forward, base)
    base._ragtune_answer_only = True


def answer_only_loss(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module, num_items_in_batch: Any = None
) -> AnswerOnlyOutput:
    """Next-token cross-entropy over the positions whose label is not -100, summed and divided by
    `num_items_in_batch` (all scored tokens of the accumulated batch, as transformers passes it) or their count."""
    shifted = labels[:, 1:]
    mask = shifted != -100
    picked = hidden[:, :-1][mask]  # (scored tokens, hidden)
    targets = shifted[mask]
    logits = lm_head(picked).float()
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    count = mask.sum()
    divisor = count.clamp(min=1) if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
    with torch.no_grad():
        log_probs = torch.log_softmax(logits.detach(), dim=-1)
        entropy_sum = -(log_probs.exp() * log_probs).sum()
        correct = (logits.detach().argmax(-1) == targets).sum()
    return AnswerOnlyOutput(loss=loss_sum / divisor.to(loss_sum.device), scored_tokens=count, correct=correct,
                            entropy_sum=entropy_sum)


def sft_trainer_class():
    """TRL's SFTTrainer with `compute_loss` through the answer-only head (same loss, same logged metrics)."""
    from trl import SFTTrainer

    class AnswerOnlySFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not self.model.training or self.args.loss_type != "nll" or \
                    self.label_smoother is not None or self.compute_loss_func is not None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train"
            labels = inputs["labels"]
            forward = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask")}
            out = model(**forward, labels=labels, answer_only_head=True, num_items_in_batch=num_items_in_batch)
            loss = out.loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            gather = self.accelerator.gather_for_metrics
            scored = gather(out.scored_tokens.detach()).sum()
            correct = gather(out.correct.detach()).sum()
            entropy = gather(out.entropy_sum.detach()).sum()
            valid = scored.item()
            self._metrics[mode]["entropy"].append((entropy / scored).item() if valid > 0 else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append((correct / scored).item() if valid > 0 else 0.0)
            if "attention_mask" in inputs:
                tokens = gather(inputs["attention_mask"].sum()).sum().item()
            else:
                tokens = gather(torch.tensor(inputs["position_ids"].size(1))).sum().item()
            self._total_train_tokens += tokens // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return AnswerOnlySFTTrainer
