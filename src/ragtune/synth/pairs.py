"""(question, positive chunk, hard negatives) triples for retriever training, from the RAFT questions.

The positive is the chunk the question was written about. Negatives are the index's top hits for the question that are
not the positive, not a copy of it, and not overlapping it in the same document (an overlapping chunk holds the
answer too, and training the retriever to push it away would teach it the wrong thing). Without an index, the
example's own distractors serve as negatives.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from ragtune.records import ContextDoc
from ragtune.synth.config import PairsConfig as PairsConfig  # re-exported: the settings of this builder
from ragtune.synth.distractors import Exclusion, HardNegativeMiner
from ragtune.synth.raft import SynthConfigError, SynthSummary, _progress, start_from_raft
from ragtune.synth.records import Group, PairExample, RaftExample
from ragtune.synth.store import GroupFile, read_raft
from ragtune.workspace import Workspace

STAGE = "synth-pairs"


def build_pairs(
    workspace: Workspace | str | Path,
    config: PairsConfig | None = None,
    source: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    searcher: Any = None,
) -> SynthSummary:
    """Write pairs for every RAFT example in `source` (default WORKSPACE/synth/raft.jsonl) to synth/pairs.jsonl."""
    config = config or PairsConfig()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    source = Path(source) if source else ws.raft_path
    out = Path(out) if out else ws.pairs_path
    if not source.exists():
        raise SynthConfigError(f"{source} does not exist: run `ragtune synth raft` or `synth from-qa` first.")
    started = time.perf_counter()
    examples = read_raft(source, split=config.split)
    if not examples:
        raise SynthConfigError(f"{source} holds no {config.split} examples.")
    mine = config.mine if config.mine is not None else (searcher is not None or ws.index_settings_path.exists())
    spans: dict[str, tuple[str, int, int]] = {}
    miner = None
    if mine:
        if searcher is None:
            from ragtune.retrieve.search import Searcher

            searcher = Searcher(ws)
        miner = HardNegativeMiner(searcher, mode=config.mode, depth=config.depth)
        from ragtune.index.store import ChunkStore

        spans = {c.chunk_id: (c.doc_id, c.start, c.end) for c in ChunkStore(ws).read_chunks()}

    fingerprint = {
        "negatives": config.negatives,
        "mode": config.mode,
        "split": config.split,
        "mine": mine,
        "source": str(source),
    }
    manifest, by_group = start_from_raft(ws, STAGE, out, fingerprint, source, overwrite, examples)
    summary = SynthSummary(out=out, groups_total=len(by_group))
    with GroupFile(out, overwrite=overwrite) as store_file:
        summary.groups_done_before = sum(g in store_file.done for g in by_group)
        bar, task = _progress(progress, len(by_group), summary.groups_done_before, "synth pairs")
        with bar:
            for group_id, group in by_group.items():
                if group_id in store_file.done:
                    continue
                counter: Counter = Counter()
                rows = []
                for e in group:
                    oracles = [ContextDoc(doc_id=i, text=_oracle_text(e, i), title="") for i in e.oracle_ids]
                    oracles = [o for o in oracles if o.text]
                    if not oracles:
                        counter["skipped: no oracle text"] += 1
                        continue
                    positive = oracles[0]
                    exclude = Exclusion(oracles, [spans[o.doc_id] for o in oracles if o.doc_id in spans])
                    if miner is not None:
                        negatives = miner.mine(e.question, config.negatives, exclude)
                        counter["mined_negatives"] += len(negatives)
                    else:
                        negatives = [d for d in e.documents if not d.is_oracle and exclude.allows(d)]
                        negatives = negatives[: config.negatives]
                    if len(negatives) < config.negatives:
                        counter["short_of_negatives"] += 1
                    rows.append(
                        PairExample(
                            id=e.id,
                            question=e.question,
                            positive_id=positive.doc_id,
                            positive=positive.text,
                            negative_ids=[n.doc_id for n in negatives],
                            negatives=[n.text for n in negatives],
                            source=e.source,
                            split=e.split,
                        ).model_dump()
                    )
                counter["pairs"] = len(rows)
                store_file.append(Group(group_id=group_id, examples=rows, counts=dict(counter)))
                summary.groups_written += 1
                summary.examples_written += len(rows)
                bar.update(task, advance=1, examples=summary.examples_written)
        summary.examples_total = store_file.examples
        summary.counts = dict(store_file.counts)
    summary.seconds = time.perf_counter() - started
    manifest.counts = {"pairs": summary.examples_total, **summary.counts}
    manifest.timings = {"total": summary.seconds}
    ws.write_manifest(manifest)
    return summary


def _oracle_text(example: RaftExample, doc_id: str) -> str:
    """The oracle's text: from the documents when it was kept, else from `dropped_oracles`."""
    for d in [*example.documents, *example.dropped_oracles]:
        if d.doc_id == doc_id:
            return d.text
    return ""
