"""The resumable group file of synthesis (`ragtune.synth.store`): a line torn by a kill is dropped, not fatal."""

from __future__ import annotations

import json

from ragtune.synth.records import Group
from ragtune.synth.store import GroupFile


def test_group_file_drops_torn_line(tmp_path):
    path = tmp_path / "g.jsonl"
    with GroupFile(path) as f:
        f.append(Group(group_id="a", examples=[{"x": 1}], counts={"examples": 1}))
        f.append(Group(group_id="b", examples=[], counts={"examples": 0}))
    with open(path, "a") as f:
        f.write('{"group_id": "c", "exam')  # a kill -9 in the middle of a write
    g = GroupFile(path)
    assert g.done == {"a", "b"} and g.dropped_torn_line and g.examples == 1
    g.append(Group(group_id="c", examples=[{"x": 2}]))
    g.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["group_id"] for x in lines] == ["a", "b", "c"]
