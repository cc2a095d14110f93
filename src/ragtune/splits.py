"""The deterministic train / eval split every stage agrees on: never train on what is evaluated.

A record's split depends only on its id, so it is the same on every machine, in every run, and for every builder
(RAFT data, pairs, preferences, evaluation sets): one in five ids goes to eval.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "eval"]


def split_of(record_id: str) -> Split:
    """'eval' when int(sha1(id), 16) % 5 == 0, else 'train'."""
    return "eval" if int(hashlib.sha1(str(record_id).encode("utf-8")).hexdigest(), 16) % 5 == 0 else "train"


def keep(record_id: str, split: str) -> bool:
    """Whether a record belongs to `split` ('train', 'eval' or 'all')."""
    return split == "all" or split_of(record_id) == split
