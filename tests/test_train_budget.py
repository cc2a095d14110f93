"""`--max-minutes` never cuts a schedule: timed steps -> a fixed step count; same seed + same steps -> same curve.

The decision is a pure function, tested with made-up step timings (no clock is faked: the numbers are inputs). The
runs use the real bundled SmolLM2 and real TRL on a few short RAFT rows.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from conftest import HOTPOT_MINI

from ragtune.train.budget import budget_warmup, decide, fit_steps, reschedule, seconds_per_step

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_fit_steps_stays_inside_the_budget_and_the_plan():
    # 600 s budget, 5% kept back -> 570 s; 3 steps took 30 s; 9.8 s/step -> 55 more steps fit: 58 in all
    assert fit_steps(planned_steps=76, budget_seconds=600, elapsed_seconds=30, done_steps=3, per_step=9.8) == 58
    assert fit_steps(76, 6000, 30, 3, 9.8) == 76  # never more than the data / epochs plan
    assert fit_steps(76, 20, 30, 3, 9.8) == 3  # the timed steps already spent it: stop there, never fewer
    assert fit_steps(76, 600, 30, 3, 0.0) == 76


def test_the_first_step_is_left_out_of_the_rate():
    assert seconds_per_step([30.0, 10.0, 12.0]) == pytest.approx(11.0)
    assert seconds_per_step([30.0, 10.0, 12.0, 50.0]) == pytest.approx(12.0)  # median: one slow step barely moves it
    assert seconds_per_step([4.0]) == 4.0


def test_decision_message_says_what_happened():
    cut = decide(10, planned_steps=76, step_seconds=[12.0, 9.8, 9.8], elapsed_seconds=31.6, warmup_steps=3)
    assert cut.steps == 3 + (570 - 31) // 9.8 == 57
    assert cut.message == "timed 3 steps at 9.8 s/step: 57 steps fit in 10 min; schedule set to 57 steps (planned 76)"
    fits = decide(60, planned_steps=76, step_seconds=[12.0, 9.8, 9.8], elapsed_seconds=31.6, warmup_steps=3)
    assert fits.steps == 76 and "schedule unchanged" in fits.message
    assert budget_warmup(0.03, 76) == 3 and budget_warmup(0.1, 200) == 20 and budget_warmup(0.03, 2) == 2


def test_reschedule_matches_a_schedule_planned_for_the_new_total():
    """Changing the total mid-warm-up gives exactly the learning rates a run planned for it would have had."""
    import torch
    from transformers import get_scheduler

    def lrs(total_planned: int, switch_at: int | None, new_total: int) -> list[float]:
        param = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.AdamW([param], lr=1e-3)
        sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=3, num_training_steps=total_planned)
        seen = []
        for step in range(new_total):
            if step == switch_at:
                reschedule(sched, opt, warmup_steps=3, total_steps=new_total)
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    switched, planned = lrs(76, 3, 20), lrs(20, None, 20)
    assert switched == pytest.approx(planned, abs=1e-12)
    assert planned[-1] < 0.01 * max(planned)  # the decay runs to (nearly) zero by the last step


@pytest.fixture(scope="module")
def tiny_ws(tmp_path_factory) -> Path:
    """RAFT rows from 6 bundled HotpotQA questions, every paragraph cut to one sentence: ~150-token rows."""
    from ragtune.synth.from_qa import FromQAConfig, synthesize_from_qa

    data = json.loads(HOTPOT_MINI.read_text(encoding="utf-8"))[:6]
    for ex in data:
        gold = {t: i for t, i in ex["supporting_facts"]}
        ex["supporting_facts"] = [[t, 0] for t in gold]
        ex["context"] = [[t, s[gold[t]:gold[t] + 1] if t in gold else s[:1]] for t, s in ex["context"]]
    ws = tmp_path_factory.mktemp("budget_ws")
    source = ws / "hotpot_tiny.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    synthesize_from_qa("hotpotqa", source, ws, FromQAConfig(cot="evidence-short", distractors=1, split="all"))
    return ws


TINY = dict(batch_size=2, grad_accum=1, max_length=384, save_steps=1000, split="all", lora_dropout=None)


def tiny_config(**kw):
    from ragtune.train.config import LoraSettings, SFTRunConfig

    base = {k: v for k, v in TINY.items() if k != "lora_dropout"}
    return SFTRunConfig(lora=LoraSettings(r=8), **base, **kw)


@pytest.mark.slow
def test_same_seed_same_steps_same_loss_curve(tiny_ws):
    from ragtune.train.sft import train_sft

    first = train_sft(tiny_ws, config=tiny_config(max_steps=3, seed=7), name="det-a", quiet=True)
    second = train_sft(tiny_ws, config=tiny_config(max_steps=3, seed=7), name="det-b", quiet=True)
    curve_a = json.loads((Path(first.run_dir) / "loss_curve.json").read_text())["loss"]
    curve_b = json.loads((Path(second.run_dir) / "loss_curve.json").read_text())["loss"]
    assert len(curve_a) == 3  # one point per optimiser step
    assert curve_a == pytest.approx(curve_b, abs=1e-6)
    assert len(set(curve_a)) == 3  # a real curve, not one repeated number


@pytest.mark.slow
def test_max_minutes_sets_a_schedule_that_completes(tiny_ws):
    """A budget far too small for the plan: the run takes the timed steps' count, its LR decays to ~0 at the end,
    and the decision is in the summary and in budget.json."""
    from ragtune.train.sft import train_sft

    r = train_sft(tiny_ws, config=tiny_config(epochs=100, max_minutes=0.5), name="budget", quiet=True)
    assert r.budget is not None
    planned = r.budget["planned_steps"]
    assert planned >= 100 * 2  # 5-6 rows (one may exceed --max-length) / batch 2: 3 steps an epoch
    assert 3 <= r.steps == r.budget["steps"] < planned
    assert r.budget["message"].startswith("timed 3 steps at ")
    lrs = [h["learning_rate"] for h in r.history]
    planned_warmup = max(int(0.03 * planned), 3)  # the usual ratio of the plan, at least the timed steps
    assert len(lrs) == r.steps
    assert lrs[:3] == pytest.approx([2e-4 * k / planned_warmup for k in range(3)])  # still warming up when timed
    assert r.budget["warmup_steps"] == max(int(0.03 * r.steps), 3)  # then the warm-up of the shorter run
    if r.steps > 4:  # (a heavily loaded machine may spend the whole budget on the timed steps)
        assert max(lrs) == pytest.approx(2e-4, rel=0.02)
        # the cosine decay is the new total's: its last step has the factor that reaches 0 one step later (a fixed
        # fraction of the peak would fail a short run, whose last factor is large: 6 steps, warm-up 3 -> 0.25)
        warmup, total = r.budget["warmup_steps"], r.steps
        last = 0.5 * (1 + math.cos(math.pi * (total - 1 - warmup) / (total - warmup)))
        assert lrs[-1] == pytest.approx(2e-4 * last, rel=0.02)
    summary = json.loads((Path(r.run_dir) / "train_summary.json").read_text())
    assert summary["budget"]["steps"] == r.steps
    assert json.loads((Path(r.run_dir) / "budget.json").read_text())["steps"] == r.steps


def test_answer_only_head_gives_the_models_own_loss():
    """The fast head (LM head on the answer tokens only) returns the loss the model's own forward computes on the
    same labels, and its gradient; with the patch switched off the forward is untouched."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragtune.models import resolve_generator
    from ragtune.train.fast_loss import install_answer_only_head

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_generator(None).path, dtype=torch.float32)
    ids = torch.randint(100, 5000, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :25] = -100  # the prompt
    labels[mask == 0] = -100
    own = model(input_ids=ids, attention_mask=mask, labels=labels)
    own.loss.backward()
    own_grad = model.model.layers[0].mlp.down_proj.weight.grad.clone()
    model.zero_grad()
    install_answer_only_head(model)
    fast = model(input_ids=ids, attention_mask=mask, labels=labels, answer_only_head=True)
    fast.loss.backward()
    assert fast.loss.item() == pytest.approx(own.loss.item(), abs=1e-5)
    assert int(fast.scored_tokens) == int((labels[:, 1:] != -100).sum())
    assert torch.allclose(model.model.layers[0].mlp.down_proj.weight.grad, own_grad, atol=1e-6)
    plain = model(input_ids=ids, attention_mask=mask, labels=labels)  # not asked for: the model's own forward
    assert plain.logits.shape == (2, 40, model.config.vocab_size)


def test_cpu_runs_one_row_per_forward_and_keeps_the_step(tmp_path):
    """On a CPU a padded pair takes SDPA's slow masked path: rows go one at a time, the optimiser step unchanged."""
    from pydantic import ValidationError

    from ragtune.train.common import trainer_arguments
    from ragtune.train.config import SFTRunConfig

    args = trainer_arguments(SFTRunConfig(batch_size=4, grad_accum=2, device="cpu"), tmp_path)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (1, 8)
    args = trainer_arguments(SFTRunConfig(batch_size=4, grad_accum=2, micro_batch=2, device="cpu"), tmp_path)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (2, 4)
    with pytest.raises(ValidationError, match="--micro-batch"):
        SFTRunConfig(batch_size=4, micro_batch=3)
