"""Dataset builders: RAFT from chunks or labelled QA sets, retriever pairs, DPO preferences, and exporters.

Outputs live under WORKSPACE/synth/ as group files (one JSONL line per finished chunk or record); read them with
`read_raft`, `read_pairs`, `read_preferences`.
"""

from ragtune.records import ContextDoc
from ragtune.splits import split_of
from ragtune.synth.records import PairExample, PreferenceExample, RaftExample
from ragtune.synth.store import read_pairs, read_preferences, read_raft

__all__ = [
    "ContextDoc",
    "PairExample",
    "PreferenceExample",
    "RaftExample",
    "read_pairs",
    "read_preferences",
    "read_raft",
    "split_of",
]
