"""Labelled QA sets read into one typed record, `QAItem`, whatever their source format.

Formats: HotpotQA (official JSON), SQuAD 1.1 / 2.0 (official JSON), NQ-oracle (the "Lost in the Middle" JSONL,
gzipped or not), generic JSONL, and RAFT datasets written by `ragtune synth` (only their held-out split is evaluated).
Every item carries its gold documents with the same `doc_id` the corpus loaders give them at ingestion
(`ragtune.corpus.qa_corpora`), so retrieval can be scored against the index without a mapping table.

The selection is deterministic: items sorted by id, filtered by the hash split shared with synthesis, then the first
N. Two systems evaluated with the same `--limit` therefore see exactly the same questions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ragtune.corpus.qa_corpora import hotpotqa_doc_id, hotpotqa_paragraph_text
from ragtune.hashing import short_id
from ragtune.jsonl import open_text, read_jsonl
from ragtune.records import ContextDoc
from ragtune.splits import split_of

FORMATS = ("hotpotqa", "squad", "nq", "jsonl", "raft")
Split = Literal["eval", "train", "all"]


class DatasetError(ValueError):
    """Bad evaluation input (missing file, unknown format, unreadable records); the message says which."""


EvalDoc = ContextDoc  # the former name, kept while eval/runner.py imports it: documents are `records.ContextDoc`


class QAItem(BaseModel):
    """One evaluation question with everything any setting needs.

    `gold_docs` are the oracle documents (HotpotQA: the two supporting paragraphs), `distractor_docs` the data set's
    own non-gold documents (HotpotQA: the eight other paragraphs), `supporting_facts` the gold sentences as text.
    An unanswerable question (SQuAD 2.0) has `answerable=False` and no answers.
    """

    id: str
    question: str
    answers: list[str] = Field(default_factory=list)
    gold_docs: list[ContextDoc] = Field(default_factory=list)
    distractor_docs: list[ContextDoc] = Field(default_factory=list)
    supporting_facts: list[str] = Field(default_factory=list)
    answerable: bool = True
    dataset: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Splits (`ragtune.splits.split_of`, the rule synthesis uses, so evaluation never sees training questions)


def select(items: list[QAItem], split: Split = "eval", limit: int | None = None) -> list[QAItem]:
    """Sort by id, keep one split, take the first `limit`: the deterministic question set of a run."""
    ordered = sorted(items, key=lambda it: it.id)
    if split != "all":
        ordered = [it for it in ordered if it.metadata.get("split", split_of(it.id)) == split]
    return ordered[:limit] if limit is not None and limit >= 0 else ordered


# ---------------------------------------------------------------------------------------------------------------------
# Readers


def _read_json(path: Path) -> Any:
    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    return read_jsonl(path, error=DatasetError)


def _dedupe_strings(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        v = str(v).strip()
        if v and v not in out:
            out.append(v)
    return out


def load_hotpotqa(path: Path) -> list[QAItem]:
    """HotpotQA official format; gold documents are the paragraphs named by `supporting_facts`."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: HotpotQA files are a JSON list of questions")
    items = []
    for example in data:
        gold_titles = {title for title, _ in example.get("supporting_facts", [])}
        paragraphs = {title: sentences for title, sentences in example.get("context", [])}
        gold: list[ContextDoc] = []
        distractors: list[ContextDoc] = []
        for title, sentences in example.get("context", []):
            text = hotpotqa_paragraph_text(sentences)
            if not text:
                continue
            doc = ContextDoc(doc_id=hotpotqa_doc_id(title, text), title=title, text=text)
            (gold if title in gold_titles else distractors).append(doc)
        facts = []
        for title, idx in example.get("supporting_facts", []):
            sentences = paragraphs.get(title, [])
            if 0 <= idx < len(sentences):
                facts.append(sentences[idx].strip())
        items.append(
            QAItem(
                id=str(example["_id"]),
                question=example["question"],
                answers=_dedupe_strings([example.get("answer", "")]),
                gold_docs=gold,
                distractor_docs=distractors,
                supporting_facts=facts,
                dataset="hotpotqa",
                metadata={"type": example.get("type"), "level": example.get("level")},
            )
        )
    return items


def load_squad(path: Path) -> list[QAItem]:
    """SQuAD 1.1 / 2.0 official JSON; the paragraph is the gold document, the article's other paragraphs distract."""
    data = _read_json(path)
    if not isinstance(data, dict) or "data" not in data:
        raise DatasetError(f"{path}: SQuAD files are a JSON object with a 'data' list of articles")
    items = []
    for article in data["data"]:
        title = str(article.get("title", "")).replace("_", " ")
        docs = []
        for paragraph in article.get("paragraphs", []):
            text = str(paragraph.get("context", "")).strip()
            docs.append(ContextDoc(doc_id=short_id("squad", title, text), title=title, text=text))
        for i, paragraph in enumerate(article.get("paragraphs", [])):
            others = [d for j, d in enumerate(docs) if j != i and d.text != docs[i].text]
            for qa in paragraph.get("qas", []):
                impossible = bool(qa.get("is_impossible", False))
                answers = [] if impossible else _dedupe_strings([a.get("text", "") for a in qa.get("answers", [])])
                items.append(
                    QAItem(
                        id=str(qa["id"]),
                        question=qa["question"],
                        answers=answers,
                        gold_docs=[docs[i]],
                        distractor_docs=others,
                        answerable=not impossible,
                        dataset="squad",
                        metadata={"plausible_answers": [a.get("text") for a in qa.get("plausible_answers", [])]}
                        if impossible
                        else {},
                    )
                )
    return items


def load_nq(path: Path) -> list[QAItem]:
    """NQ-oracle JSONL: the gold passage is in `ctxs` (isgold); distractors come from other questions' passages."""
    items = []
    for lineno, record in _read_jsonl(path):
        question = str(record.get("question", "")).strip()
        if not question:
            raise DatasetError(f"{path}:{lineno}: record has no 'question'")
        gold: list[ContextDoc] = []
        distractors: list[ContextDoc] = []
        for ctx in record.get("ctxs", []):
            title, text = str(ctx.get("title", "")), str(ctx.get("text", "")).strip()
            if not text:
                continue
            doc = ContextDoc(doc_id=short_id("nq", title, text), title=title, text=text)
            (gold if ctx.get("isgold") else distractors).append(doc)
        items.append(
            QAItem(
                id=str(record.get("id") or short_id("nq", question)),  # the id synthesis gives it
                question=question,
                answers=_dedupe_strings(list(record.get("answers", []))),
                gold_docs=gold,
                distractor_docs=distractors,
                dataset="nq",
            )
        )
    return items


# Generic JSONL, the format `ragtune synth from-qa --format jsonl` reads, plus the usual aliases.
_ID_KEYS = ("id", "_id", "qid", "question_id")
_QUESTION_KEYS = ("question", "query", "input")
_ANSWER_KEYS = ("answers", "answer", "gold_answers", "output", "target")
_ORACLE_KEYS = ("oracle", "oracles", "gold", "gold_documents", "oracle_documents", "oracle_context")
_DOC_KEYS = ("context", "documents", "docs", "contexts", "ctxs", "passages")


def _as_doc(value: Any, dataset: str) -> tuple[ContextDoc, bool | None] | None:
    """A document from a string or a {id?, title, text|content, isgold|is_oracle|...} object, with its gold flag.

    Ids follow the synthesis reader (`id` field, else a hash of title and text; a bare string hashes its text) so
    an evaluation set and the training data built from the same file agree on which document is which.
    """
    if isinstance(value, str):
        text = value.strip()
        return (ContextDoc(doc_id=short_id(dataset, text), text=text), None) if text else None
    if not isinstance(value, dict):
        return None
    title = str(value.get("title") or "")
    text = str(value.get("text") or value.get("content") or value.get("chunk") or "").strip()
    if not text:
        return None
    flags = [value.get(k) for k in ("isgold", "is_gold", "is_oracle", "oracle", "gold") if k in value]
    is_gold = bool(any(flags)) if flags else None
    doc_id = str(value.get("doc_id") or value.get("id") or short_id(dataset, title, text))
    return ContextDoc(doc_id=doc_id, title=title, text=text), is_gold


def _docs_from(value: Any, dataset: str) -> list[tuple[ContextDoc, bool | None]]:
    if value is None:
        return []
    if isinstance(value, dict) and "sentences" in value:  # gorilla RAFT: {"title": [[...]], "sentences": [[...]]}
        titles = value.get("title") or [[]]
        sentences = value.get("sentences") or [[]]
        titles = titles[0] if titles and isinstance(titles[0], list) else titles
        sentences = sentences[0] if sentences and isinstance(sentences[0], list) else sentences
        titles = list(titles) + [""] * (len(sentences) - len(titles))
        docs = (_as_doc({"title": t, "text": s} if t else s, dataset) for t, s in zip(titles, sentences, strict=False))
        return [d for d in docs if d]
    if not isinstance(value, list):
        value = [value]
    return [d for d in (_as_doc(v, dataset) for v in value) if d]


def _first(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in record and record[key] not in (None, "", []):
            return record[key]
    return None


def _item_from_record(record: dict[str, Any], dataset: str, where: str) -> QAItem:
    question = _first(record, _QUESTION_KEYS)
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{where}: record has no question (looked for {', '.join(_QUESTION_KEYS)})")
    answers_value = _first(record, _ANSWER_KEYS)
    if isinstance(answers_value, dict):  # SQuAD-style {"text": [...]}
        answers_value = answers_value.get("text", [])
    answers = _dedupe_strings(answers_value if isinstance(answers_value, list) else [answers_value or ""])

    gold: list[ContextDoc] = [d for d, _ in _docs_from(_first(record, _ORACLE_KEYS), dataset)]
    context = _docs_from(_first(record, _DOC_KEYS), dataset)
    flagged = any(flag is not None for _, flag in context)
    if not gold and not flagged:
        gold = [d for d, _ in context]  # unflagged context is the oracle, as synthesis reads it
    else:
        gold += [d for d, flag in context if flag]
    gold_texts = {d.text for d in gold}
    distractors = [d for d, _ in context if d.text not in gold_texts]
    distractors += [d for d, _ in _docs_from(record.get("distractors"), dataset) if d.text not in gold_texts]

    answerable = record.get("answerable")
    if answerable is None:
        answerable = not record.get("is_impossible", False) and bool(answers)
    item_id = _first(record, _ID_KEYS)
    if item_id is None:  # the id synthesis gives the same record, so both stages split it the same way
        item_id = short_id(dataset, question, answers[0] if answers else "")
    return QAItem(
        id=str(item_id),
        question=question.strip(),
        answers=answers,
        gold_docs=_unique(gold),
        distractor_docs=_unique(distractors),
        supporting_facts=[
            str(s) for s in record.get("supporting_facts", record.get("evidence", [])) if isinstance(s, str)
        ],
        answerable=bool(answerable),
        dataset=dataset,
    )


def _unique(docs: list[ContextDoc]) -> list[ContextDoc]:
    seen: set[str] = set()
    out = []
    for d in docs:
        if d.text not in seen:
            seen.add(d.text)
            out.append(d)
    return out


def load_jsonl(path: Path) -> list[QAItem]:
    """Generic JSONL: {id?, question, answer|answers, oracle|gold?, context|documents?, distractors?} per line.

    Documents may be strings or {id?, title, text, isgold?} objects. Context documents flagged gold join the
    oracle; unflagged context with no oracle field is the oracle (as `ragtune synth from-qa` reads it); the rest
    are distractors. A record without answers counts as unanswerable unless it says `"answerable": true`.
    """
    return [_item_from_record(record, "jsonl", f"{path}:{lineno}") for lineno, record in _read_jsonl(path)]


def _raft_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    # ragtune synth writes group lines {"group_id", "examples": [...], "counts"}; gorilla RAFT writes flat examples.
    for lineno, record in _read_jsonl(path):
        if "examples" in record and "group_id" in record:
            for n, example in enumerate(record.get("examples") or [], start=1):
                yield f"{path}:{lineno} (example {n})", example
        else:
            yield f"{path}:{lineno}", record


def load_raft(path: Path) -> list[QAItem]:
    """A RAFT dataset: ragtune's `synth/raft.jsonl` (group lines of RaftExample) or the gorilla RAFT format.

    The gold answer is `answer` (else the text after `<ANSWER>:` of `cot_answer`); the oracle is every document
    flagged `is_oracle` plus `dropped_oracles` (the (1-P) share of training examples leave it out on purpose; an
    evaluation puts it back). The example's own `split` field, when present, decides its split.
    """
    from ragtune.metrics import extract_answer

    items = []
    for where, record in _raft_records(path):
        record = dict(record)
        if not _first(record, _ANSWER_KEYS) and record.get("cot_answer"):
            record["answer"] = extract_answer(str(record["cot_answer"]))
        if "documents" in record and "dropped_oracles" in record:  # ragtune RaftExample
            record["documents"] = list(record["documents"]) + [
                {**d, "is_oracle": True} for d in record.get("dropped_oracles") or []
            ]
        elif "oracle_context" in record and isinstance(record.get("context"), dict):  # gorilla: oracle is a string
            record["oracle"] = record.pop("oracle_context")
        item = _item_from_record(record, "raft", where)
        item.answerable = bool(item.answers) or item.answerable
        if record.get("split") in ("train", "eval"):
            item.metadata["split"] = record["split"]
        items.append(item)
    return _merge_duplicates(items)


def _merge_duplicates(items: list[QAItem]) -> list[QAItem]:
    # A RAFT file can hold one question several times (one per distractor draw); evaluate it once, with every
    # distractor any copy had.
    merged: dict[str, QAItem] = {}
    for item in items:
        first = merged.get(item.id)
        if first is None:
            merged[item.id] = item
            continue
        known = {d.text for d in first.gold_docs + first.distractor_docs}
        first.distractor_docs += [d for d in item.distractor_docs if d.text not in known]
    return list(merged.values())


LOADERS = {
    "hotpotqa": load_hotpotqa,
    "squad": load_squad,
    "nq": load_nq,
    "jsonl": load_jsonl,
    "raft": load_raft,
}


def load_items(fmt: str, path: str | Path) -> list[QAItem]:
    """All items of a data set file, unordered and unsplit; `select` picks the run's questions."""
    fmt = fmt.strip().lower()
    if fmt not in LOADERS:
        raise DatasetError(f"unknown data format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"data file not found: {path}")
    try:
        return LOADERS[fmt](path)
    except (KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: does not look like {fmt} data ({type(exc).__name__}: {exc})") from exc


def load_dataset(fmt: str, path: str | Path, split: Split = "eval", limit: int | None = None) -> list[QAItem]:
    """The deterministic question set of a run: load, sort by id, keep `split`, take `limit`."""
    return select(load_items(fmt, path), split=split, limit=limit)
