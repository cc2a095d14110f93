"""Answer, quote, retrieval and speed metrics.

Answer scores follow the official SQuAD evaluation script (normalisation: lowercase, drop punctuation, drop the
articles a/an/the, collapse whitespace; the score of a prediction is its best score over the gold aliases) so the
numbers are comparable to published ones, RAFT's included. Everything here is a pure function of strings and lists:
the runner decides what was shown and generated, this module only counts.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ragtune.prompts import BEGIN_QUOTE, END_QUOTE, quoted_spans

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
_ANSWER_RE = re.compile(r"<\s*answer\s*>\s*:?", re.IGNORECASE)
_LEAD_IN = re.compile(
    r"^\s*(?:the\s+)?(?:final\s+|short\s+|correct\s+)?answer(?:\s+is\b\s*:?|\s*[:\-])\s*", re.IGNORECASE
)
# Phrases a model uses to decline; an abstention is the correct answer to an unanswerable (SQuAD 2.0) question.
_ABSTAIN = re.compile(
    r"\b(unanswerable|no answer|not answerable|cannot be answered|can ?not answer|can't be answered|"
    r"not (?:mentioned|stated|given|provided|specified|found|in the (?:context|documents?|text|passage))|"
    r"(?:does|do|did)(?: not|n't) (?:say|mention|state|provide|contain|specify|include)|i do(?: not|n't) know|"
    r"unknown|insufficient information|not enough information|no information)\b",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------------------------------------------
# Answers


def normalize_answer(text: str) -> str:
    """The SQuAD official normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def extract_answer(generation: str) -> str:
    """The short answer inside a generation.

    RAFT-style outputs end with `<ANSWER>: ...`; everything before is reasoning and must not be scored. Without the
    marker the answer is the first non-empty line, cut at the first sentence end, with a leading "Answer:" removed:
    small models often keep talking after the answer, and that tail would only dilute F1.
    """
    text = generation.strip()
    markers = list(_ANSWER_RE.finditer(text))
    if markers:  # the last marker wins: a model may restate the format in its reasoning
        text = text[markers[-1].end() :].strip()
        text = text.split("\n", 1)[0].strip() if text else ""
        text = text.replace(BEGIN_QUOTE, "").replace(END_QUOTE, "").strip()
        return _strip_wrappers(text)
    for line in text.splitlines():
        line = line.strip()
        if line:
            text = line
            break
    else:
        return ""
    text = _LEAD_IN.sub("", text)
    text = _first_sentence(text)
    return _strip_wrappers(text)


def _first_sentence(text: str) -> str:
    # A sentence ends at . ! ? after a lowercase letter, digit or closing mark, then a space and a capital:
    # "U.S. Army" and "3.5" survive, "Paris. It is" is cut.
    match = re.search(r"(?<=[a-z0-9)\"'][.!?])\s+(?=[A-Z(\"'])", text)
    return text[: match.start()] if match else text


def _strip_wrappers(text: str) -> str:
    text = text.strip().strip("*").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1]
    return text.strip()


def is_abstention(prediction: str) -> bool:
    """Whether an answer declines to answer (empty, or says the documents do not contain it)."""
    return not normalize_answer(prediction) or bool(_ABSTAIN.search(prediction))


def _f1_single(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # the official script: 1 only when both are empty
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str], answerable: bool = True) -> float:
    """1.0 when the normalised prediction equals a normalised gold alias.

    An unanswerable question (no gold alias, or `answerable=False`) is answered correctly by an abstention, the SQuAD
    2.0 convention (the official script compares against the empty string; we also accept "unanswerable" and
    its paraphrases, because an instruction-tuned model says so rather than printing nothing).
    """
    if not answerable or not golds:
        return float(is_abstention(prediction))
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: Sequence[str], answerable: bool = True) -> float:
    """Token-level F1 after normalisation, the best over the gold aliases (abstention rule as in `exact_match`)."""
    if not answerable or not golds:
        return float(is_abstention(prediction))
    return max(_f1_single(prediction, g) for g in golds)


# ---------------------------------------------------------------------------------------------------------------------
# Quotes (RAFT chain-of-thought answers copy evidence between ##begin_quote## and ##end_quote##)


def extract_quotes(generation: str) -> list[str]:
    """The non-empty quoted spans of a generation, in order (for scoring; synthesis cleans its own:
    `ragtune.synth.validate.clean_quotes`)."""
    return [q.strip() for q in quoted_spans(generation) if q.strip()]


def _quote_key(text: str) -> str:
    # Whitespace and case are not evidence; punctuation at the span's ends is often trimmed by the model.
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def quote_in(quote: str, documents: Iterable[str]) -> bool:
    """Whether a quoted span occurs (up to whitespace, case and end punctuation) in one of the documents: the
    lenient rule of evaluation (see `ragtune.prompts.quoted_spans` for the strict one of synthesis)."""
    key = _quote_key(quote)
    if not key:
        return False
    return any(key in " ".join(doc.lower().split()) for doc in documents)


def quote_stats(generation: str, shown_docs: Sequence[str], gold_docs: Sequence[str]) -> dict[str, Any]:
    """Per-answer quote accounting: how many spans were quoted, how many are real, whether one cites an oracle."""
    quotes = extract_quotes(generation)
    valid = [q for q in quotes if quote_in(q, shown_docs)]
    cites_oracle = any(quote_in(q, gold_docs) for q in valid) if gold_docs else False
    return {"quotes": len(quotes), "valid_quotes": len(valid), "cites_oracle": cites_oracle}


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval: binary relevance against the gold documents, or graded relevance from BEIR qrels
#
# `gold` is either the gold document ids (binary: each relevant with gain 1) or a qrels mapping doc id -> score (BEIR,
# TREC): a score > 0 is relevant and is the document's gain in nDCG, as pytrec_eval's ndcg_cut computes it; a judged
# score of 0 is not relevant. Rankings are of documents: several chunks of one document count once, at the best rank.

Gold = Iterable[str] | Mapping[str, float]
BEIR_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")  # what BEIR and MTEB print per data set


def _dedupe(ids: Sequence[str]) -> list[str]:
    # Several chunks of one document count once, at the rank of the best chunk.
    seen: set[str] = set()
    out = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def _gains(gold: Gold) -> dict[str, float]:
    """Relevant document -> gain: 1 each for a list of ids, the positive scores of a qrels mapping."""
    if isinstance(gold, Mapping):
        return {str(d): float(s) for d, s in gold.items() if s > 0}
    return dict.fromkeys(gold, 1.0)


def recall_at_k(retrieved: Sequence[str], gold: Gold, k: int) -> float:
    """Share of relevant documents found in the top k (documents, not chunks); 0 when nothing is relevant."""
    gold_set = set(_gains(gold))
    if not gold_set:
        return 0.0
    top = set(_dedupe(retrieved)[:k])
    return len(top & gold_set) / len(gold_set)


def mrr(retrieved: Sequence[str], gold: Gold, k: int | None = None) -> float:
    """Reciprocal rank of the first relevant document within the top k (0 when none is there)."""
    gold_set = set(_gains(gold))
    ranked = _dedupe(retrieved)
    for rank, doc_id in enumerate(ranked[:k] if k else ranked, start=1):
        if doc_id in gold_set:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(retrieved: Sequence[str], gold: Gold, k: int) -> float:
    """nDCG@k: DCG of the ranking (gain / log2(rank + 1)) over the DCG of the ideal ranking, every relevant document
    first by gain. Binary for a list of ids; graded for qrels (pytrec_eval's ndcg_cut, which BEIR reports)."""
    gains = _gains(gold)
    if not gains:
        return 0.0
    ranked = _dedupe(retrieved)[:k]
    dcg = sum(gains.get(doc_id, 0.0) / math.log2(rank + 1) for rank, doc_id in enumerate(ranked, start=1))
    ideal_gains = sorted(gains.values(), reverse=True)[:k]
    ideal = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal_gains, start=1))
    return dcg / ideal


def beir_metrics(retrieved: Sequence[str], qrels: Gold) -> dict[str, float]:
    """nDCG@10, recall@10, recall@100 and MRR@10 of one query's ranking (`BEIR_METRICS`); `retrieved` should hold at
    least 100 distinct documents for recall@100 to mean what BEIR means."""
    return {
        "ndcg@10": ndcg_at_k(retrieved, qrels, 10),
        "recall@10": recall_at_k(retrieved, qrels, 10),
        "recall@100": recall_at_k(retrieved, qrels, 100),
        "mrr@10": mrr(retrieved, qrels, 10),
    }


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over queries (the macro average BEIR reports); keys of the first row."""
    if not rows:
        return {}
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}


# ---------------------------------------------------------------------------------------------------------------------
# Degenerate output: loops and answers that never come
#
# A small model often falls into a loop (`##begin_quote####begin_quote####...`) until the token budget runs out, or
# reasons without ever writing `<ANSWER>:`. Both are scored as wrong answers anyway; counting them says *why* a system
# is bad, and a tuned model that trades loops for answers shows it here before it shows in F1.

LOOP_MIN_REPEATS = 3  # copies of the repeated unit at the end of a generation that stopped at the token limit
LOOP_MIN_CHARS = 32  # ... covering at least this many characters (so "..." or "1000000" is no loop)
LOOP_MIN_REPEATS_NO_TOKENS = 4  # stricter when the backend did not say whether the limit was reached
LOOP_MIN_CHARS_NO_TOKENS = 64
TOKEN_LIMIT_SHARE = 0.95  # a generation using this share of max_new_tokens ran to the limit
_MAX_PERIOD = 512  # characters: longer units cannot repeat 3 times within a usual budget


def tail_repetition(text: str) -> tuple[int, float, int]:
    """The periodic tail of a text: (period in characters, number of copies, characters covered).

    Whitespace is collapsed first, so a loop that varies only in spacing still has one period. For each period p the
    tail is extended backwards while every character equals the one p positions later, so a final copy cut short by
    the token limit still counts (as a fraction of a copy). The period covering the most characters wins, the smallest
    on ties. (0, 0.0, 0) when nothing repeats at the end.
    """
    s = " ".join(text.split())
    n = len(s)
    best = (0, 0.0, 0)
    for p in range(1, min(_MAX_PERIOD, n // 2) + 1):
        if s[n - 1] != s[n - 1 - p]:
            continue
        i = n - 1 - p
        while i >= 0 and s[i] == s[i + p]:
            i -= 1
        covered = (n - 1 - p - i) + p
        if covered > best[2] and covered >= 2 * p:
            best = (p, covered / p, covered)
            if covered == n:  # the whole text is periodic: no longer period can cover more
                break
    return best


def hit_token_limit(
    completion_tokens: int | None, max_new_tokens: int | None, finish_reason: str | None = None
) -> bool | None:
    """Whether a generation ran to its token budget; None when the backend reported neither tokens nor a reason."""
    if finish_reason == "length":
        return True
    if completion_tokens and max_new_tokens:
        return completion_tokens >= math.ceil(TOKEN_LIMIT_SHARE * max_new_tokens)
    if finish_reason in ("stop", "cancelled"):
        return False
    return None


def is_looping(
    generation: str,
    completion_tokens: int | None = None,
    max_new_tokens: int | None = None,
    finish_reason: str | None = None,
) -> bool:
    """Whether a generation is a loop: it ran to the token limit and ends in >= 3 copies of one unit (>= 32 chars).

    A repeated tail alone is not enough: an answer that says "no no no" and stops chose to stop. When the backend
    reported no token count, the limit is unknown and the tail must be longer (>= 4 copies, >= 64 chars).
    """
    period, repeats, covered = tail_repetition(generation)
    if not period:
        return False
    hit = hit_token_limit(completion_tokens, max_new_tokens, finish_reason)
    if hit is None:
        return repeats >= LOOP_MIN_REPEATS_NO_TOKENS and covered >= LOOP_MIN_CHARS_NO_TOKENS
    return hit and repeats >= LOOP_MIN_REPEATS and covered >= LOOP_MIN_CHARS


def has_answer_tag(generation: str) -> bool:
    """Whether a generation reached `<ANSWER>:` (the marker `extract_answer` looks for, as leniently)."""
    return bool(_ANSWER_RE.search(generation))


def degeneracy_rates(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Shares of looping answers, of answers without `<ANSWER>:` and of either (fractions in [0, 1]).

    Reads the per-record flags `looped`, `answer_tag`, `answer_tag_expected` and `hit_token_limit` written by the
    runner. `no_answer_tag_rate` counts only the records whose prompt asks for the tag (the chain-of-thought prompt):
    a short-answer prompt never asks for it, so there it is None (n/a) rather than a meaningless 100%.
    `degenerate_rate` is the share that looped or, when the tag was asked for, never wrote it. Empty when the
    records carry no flags (answers kept before the flags existed are flagged when a run is loaded again).
    """
    flagged = [r for r in records if "looped" in r]
    if not flagged:
        return {}
    expected = [r for r in flagged if r.get("answer_tag_expected")]
    limits = [r["hit_token_limit"] for r in flagged if r.get("hit_token_limit") is not None]
    degenerate = [bool(r["looped"]) or bool(r.get("answer_tag_expected") and not r.get("answer_tag")) for r in flagged]
    return {
        "degenerate_rate": _mean([float(d) for d in degenerate]),
        "loop_rate": _mean([float(bool(r["looped"])) for r in flagged]),
        "no_answer_tag_rate": _mean([float(not r.get("answer_tag")) for r in expected]) if expected else None,
        "token_limit_rate": _mean([float(bool(v)) for v in limits]),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Confidence intervals (bootstrap over questions)

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_CONFIDENCE = 0.95


def _resampled_indices(n: int, resamples: int, seed: int):
    """Bootstrap resamples of question indices, `resamples` rows of `n` draws with replacement, seeded, in chunks of
    at most ~16 MB however many questions there are."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, resamples, chunk):
        yield rng.integers(0, n, size=(min(resamples, start + chunk) - start, n))


def _percentile_interval(resampled: np.ndarray, point: float, confidence: float) -> tuple[float, float, float]:
    """(point, low, high) from resampled statistics: their (1-confidence)/2 and (1+confidence)/2 percentiles. A
    resampled statistic of equal values can differ from the point estimate by a rounding error; the point is kept
    inside its interval."""
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(resampled, [100 * alpha, 100 * (1 - alpha)])
    return point, float(min(low, point)), float(max(high, point))


def bootstrap_ci(
    values: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = BOOTSTRAP_CONFIDENCE,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile bootstrap interval.

    Questions are resampled with replacement `resamples` times (seeded: the same inputs give the same interval);
    the interval is the (1-confidence)/2 and (1+confidence)/2 percentiles of the resampled means. Values that are all
    equal give a degenerate interval [v, v]. Raises ValueError on an empty input.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty list of numbers")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError("resamples must be >= 1 and confidence in (0, 1)")
    means = np.concatenate([x[idx].mean(axis=1) for idx in _resampled_indices(x.size, resamples, seed)])
    return _percentile_interval(means, float(x.mean()), confidence)


def paired_bootstrap(
    baseline: Sequence[float],
    system: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = BOOTSTRAP_CONFIDENCE,
) -> tuple[float, float, float]:
    """(diff, low, high): mean of system minus baseline over the same questions, with a paired bootstrap interval.

    Paired: each resample draws question indices once and uses them for both systems, which is the bootstrap of the
    per-question differences. Much tighter than comparing two independent intervals, because most of the variance
    is between questions (some are hard for every system). `baseline[i]` and `system[i]` must score the same question.
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(system, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same questions: {a.size} baseline vs {b.size} system scores")
    return bootstrap_ci((b - a).tolist(), resamples=resamples, seed=seed, confidence=confidence)


def ratio_bootstrap(
    baseline: Sequence[float],
    system: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = BOOTSTRAP_CONFIDENCE,
) -> tuple[float, float, float]:
    """(ratio, low, high): mean(system) / mean(baseline) over the same questions, with a paired percentile bootstrap
    interval (each resample draws question indices once for both). For claims such as "tuned F1 is at least 2x the
    base model's": the ratio of means, not a mean of per-question ratios, which a question with F1 0 would break.
    Resamples whose baseline mean is 0 are dropped; raises ValueError when the baseline's own mean is 0."""
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(system, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores need the same questions: {a.size} baseline vs {b.size} system scores")
    if a.mean() == 0:
        raise ValueError("the baseline's mean is 0: a ratio to it is undefined")
    ratios = []
    for idx in _resampled_indices(a.size, resamples, seed):
        den = a[idx].mean(axis=1)
        keep = den > 0
        ratios.append(b[idx].mean(axis=1)[keep] / den[keep])
    return _percentile_interval(np.concatenate(ratios), float(b.mean() / a.mean()), confidence)


def excludes_zero(low: float, high: float) -> bool:
    """Whether an interval lies entirely on one side of zero (the difference is significant at its level)."""
    return low > 0.0 or high < 0.0


def per_question_means(records: Sequence[dict[str, Any]], key: str) -> dict[str, float]:
    """The mean of `key` per question id: one value per question, also for a K sweep holding several per id.
    A record without an id stands for a question of its own."""
    sums: dict[str, list[float]] = {}
    for i, r in enumerate(records):
        if r.get(key) is not None:
            sums.setdefault(str(r.get("id", f"#{i}")), []).append(float(r[key]))
    return {qid: sum(v) / len(v) for qid, v in sums.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def f1_interval(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """`f1_ci_low` / `f1_ci_high`: the 95% bootstrap interval of mean F1 over questions (fractions, like `f1`).

    Records with several answers per question (a K sweep) count each question once, at its mean over them.
    """
    values = list(per_question_means(records, "f1").values())
    if not values:
        return {}
    _, low, high = bootstrap_ci(values)
    return {"f1_ci_low": low, "f1_ci_high": high}


def aggregate(records: Sequence[dict[str, Any]], wall_seconds: float | None = None) -> dict[str, Any]:
    """Scores of a run from its per-question records (the lines of predictions.jsonl).

    Each record carries `em`, `f1`, `answerable`, `abstained`, quote counts, optional retrieval scores and the
    generation accounting. Means are over the questions that have the metric; a metric nobody has is None, so a
    closed-book run does not report a quote precision of 0. Percentages are fractions in [0, 1].
    """
    n = len(records)
    answerable = [r for r in records if r.get("answerable", True)]
    unanswerable = [r for r in records if not r.get("answerable", True)]
    scores: dict[str, Any] = {
        "n": n,
        "em": _mean([r["em"] for r in records]),
        "f1": _mean([r["f1"] for r in records]),
    }
    scores.update(f1_interval(records))
    if unanswerable:
        scores["n_unanswerable"] = len(unanswerable)
        scores["unanswerable_accuracy"] = _mean([float(r["abstained"]) for r in unanswerable])
        scores["answerable_em"] = _mean([r["em"] for r in answerable])
        scores["answerable_f1"] = _mean([r["f1"] for r in answerable])
        scores["answerable_abstain_rate"] = _mean([float(r["abstained"]) for r in answerable])
    quoted = sum(r.get("quotes", 0) for r in records)
    scores["quotes_per_answer"] = quoted / n if n else None
    scores["quote_precision"] = sum(r.get("valid_quotes", 0) for r in records) / quoted if quoted else None
    scores.update(degeneracy_rates(records))
    with_oracle = [r for r in records if r.get("oracle_shown")]
    scores["oracle_citation_rate"] = _mean([float(r.get("cites_oracle", False)) for r in with_oracle])
    with_retrieval = [r for r in records if r.get("retrieval")]
    if with_retrieval:
        for key in sorted({key for r in with_retrieval for key in r["retrieval"]}):
            scores[key] = _mean([r["retrieval"][key] for r in with_retrieval if key in r["retrieval"]])
    # Speed: per-question latency is the batch's time shared by its questions (that is what a user waits per answer
    # when the batch is full); throughput uses the wall clock of the whole run when the runner passes it.
    latencies = [r.get("seconds", 0.0) for r in records]
    prompt_tokens = sum(r.get("prompt_tokens", 0) for r in records)
    completion_tokens = sum(r.get("completion_tokens", 0) for r in records)
    gen_seconds = sum(latencies)
    total = wall_seconds if wall_seconds is not None else gen_seconds
    scores.update(
        {
            "latency_mean_s": _mean(latencies),
            "latency_p50_s": _percentile(latencies, 0.5),
            "latency_p95_s": _percentile(latencies, 0.95),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "generation_seconds": gen_seconds,
            "questions_per_min": 60.0 * n / total if total else None,
            "completion_tokens_per_s": completion_tokens / gen_seconds if gen_seconds else None,
            "prompt_tokens_per_s": prompt_tokens / gen_seconds if gen_seconds else None,
        }
    )
    return scores
