"""The train / eval hash split (`ragtune.splits`) that synthesis, training and evaluation share."""

from __future__ import annotations

import json

from conftest import HOTPOT_SHARED, needs_shared

from ragtune.splits import split_of


@needs_shared
def test_split_is_deterministic_and_one_in_five():
    ids = [r["_id"] for r in json.loads(HOTPOT_SHARED.read_text())]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    share = splits.count("eval") / len(ids)
    assert 0.15 < share < 0.25
    import hashlib

    for i, s in zip(ids, splits, strict=True):
        assert (s == "eval") == (int(hashlib.sha1(i.encode()).hexdigest(), 16) % 5 == 0)
