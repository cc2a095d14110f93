"""Build BEIR-format folders (corpus.jsonl, queries.jsonl, qrels/*.tsv) for retrieval evaluation and training.

    python scripts/build_beir.py hotpotqa ../shared/data/hotpotqa/hotpot_dev_distractor_v1_subset.json OUT
    python scripts/build_beir.py scifact ../shared/data/scifact_train OUT [--share 0.2] [--seed 0]

hotpotqa: every distinct paragraph of the subset once (`_id` = the id `ragtune ingest` gives the paragraph in the
official JSON, so both ingests agree), each question a query with its two gold paragraphs relevant; qrels/test.tsv
holds the questions ragtune's split evaluates (`int(sha1(_id), 16) % 5 == 0`), qrels/train.tsv the rest.
`--questions N` keeps the first N of each split by id and `--distractors K` only K distractor paragraphs per question
(small samples, such as tests/data/beir_hotpotqa_mini).

scifact: the corpus copied as is, every train claim, and the real train qrels split by query: qrels/dev.tsv the held-out
~20% (`ragtune.datasets.beir.held_out`, seeded hash of the query id), qrels/train.tsv the rest. The official test
split is not in ../shared, so dev is what recipes are chosen and reported on. SciFact is CC BY-NC 2.0: build it into
a work folder, never into the repository.

Deterministic: the same input and options write byte-identical files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ragtune.datasets import load_hotpotqa  # noqa: E402
from ragtune.datasets.beir import corpus_file, from_qa_items, held_out, load_beir, write_beir  # noqa: E402
from ragtune.splits import split_of  # noqa: E402

README = {
    "hotpotqa": """# HotpotQA in BEIR layout (built by scripts/build_beir.py)

Source: {source} (HotpotQA dev set, distractor setting; Yang et al. 2018, https://hotpotqa.github.io).
Licence: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/), redistributed under the same licence.
Corpus: every distinct paragraph ({docs} documents; `_id` = ragtune's HotpotQA paragraph id). Queries: {queries}
questions; a question's two supporting paragraphs are relevant (score 1). qrels/test.tsv: the {test} questions of
ragtune's evaluation split (int(sha1(_id), 16) % 5 == 0); qrels/train.tsv: the other {train}.{sample}
""",
    "scifact": """# SciFact train claims in BEIR layout with a held-out split (built by scripts/build_beir.py)

Source: {source} (allenai/scifact, BEIR layout). Licence: CC BY-NC 2.0, non-commercial: do not commit this folder.
Corpus: {docs} abstracts, copied. Queries: the train claims. qrels/dev.tsv: {test} claims held out by a seeded hash of
the query id (share {share}, seed {seed}; ragtune.datasets.beir.held_out); qrels/train.tsv: the other {train}. The
official SciFact test split is not included: dev here is part of the official *train* split.
""",
}


def build_hotpotqa(source: Path, out: Path, questions: int | None, distractors: int | None) -> dict:
    items = load_hotpotqa(source)
    if questions is not None:
        by_split: dict[str, list] = {"eval": [], "train": []}
        for item in sorted(items, key=lambda it: it.id):
            by_split[split_of(item.id)].append(item)
        items = by_split["eval"][:questions] + by_split["train"][:questions]
    if distractors is not None:
        items = [it.model_copy(update={"distractor_docs": it.distractor_docs[:distractors]}) for it in items]
    docs, queries, qrels = from_qa_items(items)
    write_beir(out, docs, queries, qrels)
    sample = (f" Sample: the first {questions} questions of each split by id" if questions is not None else "") + (
        f", {distractors} distractor paragraphs each." if distractors is not None else ("." if questions else ""))
    return {"docs": len(docs), "queries": len(queries), "test": len(qrels["test"]), "train": len(qrels["train"]),
            "sample": sample}


def build_scifact(source: Path, out: Path, share: float, seed: int) -> dict:
    data = load_beir(source, splits=["train"], corpus=False)
    train, dev = held_out(data.qrels["train"], share=share, seed=seed)
    corpus = corpus_file(source)
    assert corpus is not None  # load_beir checked the folder has queries; the corpus is checked here
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(corpus, out / corpus.name)
    write_beir(out, None, data.queries.values(), {"train": train, "dev": dev})
    with open(corpus, "rb") as f:
        docs = sum(1 for line in f if line.strip())
    return {"docs": docs, "test": len(dev), "train": len(train), "share": share, "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("hotpotqa", "scifact"))
    parser.add_argument("source", type=Path, help="hotpotqa: the official JSON; scifact: the BEIR folder")
    parser.add_argument("out", type=Path, help="the BEIR folder to write")
    parser.add_argument("--questions", type=int, default=None, help="hotpotqa: first N questions of each split")
    parser.add_argument("--distractors", type=int, default=None, help="hotpotqa: distractor paragraphs kept each")
    parser.add_argument("--share", type=float, default=0.2, help="scifact: share of claims held out")
    parser.add_argument("--seed", type=int, default=0, help="scifact: seed of the held-out hash")
    args = parser.parse_args()
    if args.kind == "hotpotqa":
        facts = build_hotpotqa(args.source, args.out, args.questions, args.distractors)
    else:
        facts = build_scifact(args.source, args.out, args.share, args.seed)
    (args.out / "README.md").write_text(README[args.kind].format(source=args.source.name, **facts), encoding="utf-8")
    print(f"wrote {args.out}: {facts}")


if __name__ == "__main__":
    main()
