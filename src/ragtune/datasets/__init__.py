"""QA data sets, one reader per format, used by every stage: ingestion indexes their documents, synthesis builds
RAFT examples from them, evaluation asks their questions. One file is therefore read the same everywhere.

Formats: HotpotQA (official JSON), SQuAD 1.1 / 2.0 (official JSON), NQ-oracle (the "Lost in the Middle" JSONL,
gzipped or not), generic JSONL (`ragtune.datasets.generic`), and RAFT data sets written by `ragtune synth`. Every
item carries its documents with the `doc_id` ingestion gives them, so retrieval can be scored against the index
without a mapping table.

The selection is deterministic: items sorted by id, filtered by the hash split (`ragtune.splits`), then the first
N. Two systems evaluated with the same `--limit` therefore see exactly the same questions, and never a question
synthesis trained on.

Foundation package: it imports no stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ragtune.datasets.base import DatasetError, QAItem, Split
from ragtune.datasets.generic import load_jsonl
from ragtune.datasets.hotpotqa import load_hotpotqa
from ragtune.datasets.nq import load_nq
from ragtune.datasets.raft import load_raft
from ragtune.datasets.squad import load_squad
from ragtune.splits import split_of

__all__ = ["FORMATS", "LOADERS", "DatasetError", "QAItem", "Split", "load_dataset", "load_hotpotqa", "load_items",
           "load_jsonl", "load_nq", "load_raft", "load_squad", "select", "split_of"]

LOADERS: dict[str, Callable[[Path], list[QAItem]]] = {
    "hotpotqa": load_hotpotqa,
    "squad": load_squad,
    "nq": load_nq,
    "jsonl": load_jsonl,
    "raft": load_raft,
}
FORMATS = tuple(LOADERS)


def select(items: list[QAItem], split: Split = "eval", limit: int | None = None) -> list[QAItem]:
    """Sort by id, keep one split, take the first `limit`: the deterministic question set of a run."""
    ordered = sorted(items, key=lambda it: it.id)
    if split != "all":
        ordered = [it for it in ordered if it.metadata.get("split", split_of(it.id)) == split]
    return ordered[:limit] if limit is not None and limit >= 0 else ordered


def load_items(fmt: str, path: str | Path) -> list[QAItem]:
    """All items of a data set file, unordered and unsplit; `select` picks a run's questions."""
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
