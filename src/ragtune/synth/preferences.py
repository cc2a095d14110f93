"""DPO preference pairs: for each RAFT example the validated teacher answer is `chosen`; `rejected` is the student's
own answer when it is wrong or leans on a distractor, which is exactly the behaviour preference tuning should remove.

When the student already answers well, a rejected answer can be built instead (`synthetic=True`): the same final
answer "supported" by a quote from a distractor, so the pair teaches to cite the right document.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from ragtune.hashing import short_id
from ragtune.llm.base import LLM, GenerationConfig
from ragtune.prompts import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE, shown_text
from ragtune.synth import prompts
from ragtune.synth.config import PreferencesConfig as PreferencesConfig  # re-exported: this builder's settings
from ragtune.synth.raft import SynthConfigError, SynthSummary, _progress, start_from_raft, write_groups
from ragtune.synth.records import Group, PreferenceExample, RaftExample
from ragtune.synth.store import GroupFile, read_raft
from ragtune.synth.validate import clean_quotes, normalize_ws, quote_verbatim, split_answer
from ragtune.workspace import Workspace

STAGE = "synth-preferences"


def _tokens(text: str) -> list[str]:
    text = re.sub(r"\b(a|an|the)\b", " ", normalize_ws(text).lower())
    return re.sub(r"[^\w\s]", " ", text).split()


def answer_f1(predicted: str, gold: str) -> float:
    """SQuAD-style token F1 (lower-cased, articles and punctuation removed)."""
    p, g = _tokens(predicted), _tokens(gold)
    if not p or not g:
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def judge(student_text: str, example: RaftExample, threshold: float = 0.5) -> str | None:
    """Why the student's answer is worse than the teacher's ('no_answer', 'wrong_answer', 'cites_distractor'),
    or None when it is as good."""
    parts = split_answer(student_text)
    if parts is None or not parts[1]:
        return "no_answer"
    if answer_f1(parts[1], example.answer) < threshold:
        return "wrong_answer"
    oracles = [shown_text(d) for d in example.documents if d.is_oracle]
    distractors = [shown_text(d) for d in example.documents if not d.is_oracle]
    for q in clean_quotes(parts[0]):
        if not quote_verbatim(q, oracles) and quote_verbatim(q, distractors):
            return "cites_distractor"
    return None


def distractor_citation(example: RaftExample, rng: random.Random) -> str | None:
    """A plausible-looking but wrong-evidence answer: a distractor sentence quoted, then the right final answer."""
    distractors = [d for d in example.documents if not d.is_oracle and d.text.strip()]
    if not distractors:
        return None
    doc = rng.choice(distractors)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", doc.text) if len(s.split()) >= 4]
    if not sentences:
        return None
    sentence = rng.choice(sentences)
    return (
        f"The document says {BEGIN_QUOTE}{sentence}{END_QUOTE} So the answer is {example.answer}.\n"
        f"{ANSWER_TAG} {example.answer}"
    )


def build_preferences(
    workspace: Workspace | str | Path,
    student: LLM,
    config: PreferencesConfig | None = None,
    source: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SynthSummary:
    """Write DPO pairs for the oracle-kept RAFT examples in `source` to WORKSPACE/synth/preferences.jsonl."""
    config = config or PreferencesConfig()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    source = Path(source) if source else ws.raft_path
    out = Path(out) if out else ws.preferences_path
    if not source.exists():
        raise SynthConfigError(f"{source} does not exist: run `ragtune synth raft` or `synth from-qa` first.")
    started = time.perf_counter()
    # only examples that show the oracle: a preference about citing it needs it present
    examples = [e for e in read_raft(source, split=config.split) if e.oracle_kept]
    if config.limit is not None:
        examples = examples[: config.limit]
    if not examples:
        raise SynthConfigError(f"{source} holds no {config.split} examples that show their oracle.")
    fingerprint = {
        "student": student.name,
        "split": config.split,
        "max_new_tokens": config.max_new_tokens,
        "synthetic": config.synthetic,
        "seed": config.seed,
        "system_prompt": config.system_prompt,
        "source": str(source),
    }
    manifest, by_group = start_from_raft(ws, STAGE, out, fingerprint, source, overwrite, examples)
    group_ids = list(by_group)
    gen_config = GenerationConfig(max_new_tokens=config.max_new_tokens, seed=config.seed)
    summary = SynthSummary(out=out, groups_total=len(group_ids))
    with GroupFile(out, overwrite=overwrite) as store_file:
        summary.groups_done_before = sum(g in store_file.done for g in group_ids)
        bar, task = _progress(progress, len(group_ids), summary.groups_done_before, "synth preferences")
        with bar:
            for start in range(0, len(group_ids), config.concurrency):
                wave = group_ids[start : start + config.concurrency]
                work = (
                    wave
                    if getattr(student, "batch_sensitive", False)
                    else [g for g in wave if g not in store_file.done]
                )
                if not any(g not in store_file.done for g in wave):
                    continue
                groups = _preference_wave([by_group[g] for g in work], work, student, config, gen_config)
                write_groups(groups, store_file, summary, bar, task)
        summary.examples_total = store_file.examples
        summary.counts = dict(store_file.counts)
    summary.usage = student.usage.to_dict()
    summary.seconds = time.perf_counter() - started
    manifest.counts = {"pairs": summary.examples_total, **summary.counts}
    manifest.timings = {"total": summary.seconds}
    manifest.extra["usage"] = summary.usage
    ws.write_manifest(manifest)
    return summary


def _preference_wave(
    groups: Sequence[list[RaftExample]],
    group_ids: Sequence[str],
    student: LLM,
    config: PreferencesConfig,
    gen_config: GenerationConfig,
) -> list[Group]:
    flat = [(gi, e) for gi, group in enumerate(groups) for e in group]
    conversations = [prompts.student_messages(e, config.system_prompt) for _, e in flat]
    outs = student.generate(conversations, gen_config, batch_size=config.concurrency)
    rows: dict[int, list[dict]] = defaultdict(list)
    counters: dict[int, Counter] = defaultdict(Counter)
    for (gi, e), messages, out in zip(flat, conversations, outs, strict=True):
        counter = counters[gi]
        reason = judge(out.text, e, config.f1_threshold)
        rejected = out.text
        if reason is None:
            counter["student_correct"] += 1
            if not config.synthetic:
                continue
            rng = random.Random(f"{config.seed}:{e.id}")
            built = distractor_citation(e, rng)
            if built is None:
                counter["skipped: no distractor to cite"] += 1
                continue
            rejected, reason = built, "synthetic_distractor_citation"
        counter[f"rejected: {reason}"] += 1
        rows[gi].append(
            PreferenceExample(
                id=short_id("pref", e.id),
                example_id=e.id,
                messages=messages,
                chosen=e.cot_answer,
                rejected=rejected,
                reason=reason,
                student=student.name,
                split=e.split,
            ).model_dump()
        )
    result = []
    for gi, gid in enumerate(group_ids):
        counts = counters[gi]
        counts["pairs"] = len(rows[gi])
        counts["examples_seen"] = len(groups[gi])
        result.append(Group(group_id=gid, examples=rows[gi], counts=dict(counts)))
    return result
