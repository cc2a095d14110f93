"""A disk cache for LLM query transforms, keyed by (model, transform, prompt version, query).

LLM transforms cost a generation per query (seconds on a CPU); the same question asked again, by a user, an eval
rerun or a benchmark, must not pay twice. SQLite (stdlib) is atomic per write and safe across processes, so a
killed run keeps what it computed and two servers can share one workspace.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from ragtune.hashing import short_id


class TransformCache:
    """`get` / `put` a list of strings under a key made of its parts; `hits` and `misses` count lookups."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS transforms (key TEXT PRIMARY KEY, parts TEXT, value TEXT)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: str) -> str:
        return short_id(*parts)

    def get(self, *parts: str) -> list[str] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM transforms WHERE key = ?", (self.key(*parts),)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, value: list[str], *parts: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO transforms (key, parts, value) VALUES (?, ?, ?)",
                (self.key(*parts), json.dumps(parts, ensure_ascii=False), json.dumps(value, ensure_ascii=False)),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
