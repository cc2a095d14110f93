"""SQuAD 1.1 / 2.0 (official JSON): the paragraph is the gold document, the article's other paragraphs distract;
the evidence to quote is the sentence at the first answer's `answer_start`."""

from __future__ import annotations

from pathlib import Path

from ragtune.datasets.base import DatasetError, QAItem, dedupe_strings, read_json, sentence_at, sentence_with
from ragtune.hashing import short_id
from ragtune.records import ContextDoc


def load_squad(path: Path) -> list[QAItem]:
    data = read_json(path)
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
                answers = [] if impossible else dedupe_strings([a.get("text", "") for a in qa.get("answers", [])])
                evidence = []
                if answers:
                    first = qa["answers"][0]
                    # the offset is into the raw context; the document's text is stripped
                    sentence = sentence_at(str(paragraph.get("context", "")), int(first.get("answer_start", 0)))
                    sentence = sentence.strip() if sentence.strip() in docs[i].text else (
                        sentence_with(docs[i].text, first["text"]) or "")
                    evidence = [(title, sentence)] if sentence else []
                items.append(
                    QAItem(
                        id=str(qa["id"]),
                        question=qa["question"],
                        answers=answers,
                        gold_docs=[docs[i]],
                        distractor_docs=others,
                        evidence=evidence,
                        answerable=not impossible,
                        dataset="squad",
                        metadata={"plausible_answers": [a.get("text") for a in qa.get("plausible_answers", [])]}
                        if impossible
                        else {},
                    )
                )
    return items
