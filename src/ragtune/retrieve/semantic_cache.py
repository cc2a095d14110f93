"""A semantic answer cache, one per tenant: a question close enough (cosine >= threshold) to one already answered
under the same settings gets the stored answer without retrieval or generation.

Entries are keyed by a settings signature (model, prompt, k, filters, decoding, ...) and matched by the query's
embedding. Each tenant's entries remember the fingerprint of that tenant's part of the index they were made under; a
lookup or store with another fingerprint empties that tenant's cache first, so an answer never outlives the documents
it came from, and one tenant's ingest leaves the other tenants' caches warm.

Given a `path`, the cache also lives in a SQLite file (created 0600: it holds users' questions and answers), written
through on every store, eviction and invalidation and read back at start, so a restarted server keeps its warm cache.
Lookups never touch the file. A `namespace` (the server's settings that no signature carries: search configuration,
embedder) marks the rows and only rows of the cache's own namespace are read, so two servers with different settings
on one workspace neither answer from nor erase each other's entries; rows of an older fingerprint of their tenant
(its documents changed since) are deleted at load, and a tenant's invalidation deletes its rows of every namespace.
Values go through `encode` / `decode` (JSON by default), so nothing in the file is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, fingerprint TEXT NOT NULL, signature TEXT NOT NULL,
  namespace TEXT NOT NULL, question TEXT NOT NULL, vector BLOB NOT NULL, value TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_tenant ON entries(tenant, seq);
"""


@dataclass
class CacheHit:
    value: Any
    similarity: float
    question: str


@dataclass
class _Group:
    """The cached questions of one settings signature: normalised query vectors (one row each), oldest first."""

    matrix: np.ndarray
    items: list[tuple[str, Any, int | None]]  # (question, value, row id in the file or None)


@dataclass
class _TenantCache:
    fingerprint: str
    entries: OrderedDict[str, _Group] = field(default_factory=OrderedDict)  # least recently used settings first
    size: int = 0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    invalidations: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "stores": self.stores, "invalidations": self.invalidations}


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _open_private(path: Path) -> sqlite3.Connection:
    """The cache file, created 0600 before SQLite opens it (its WAL and shared-memory files take the same mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    os.chmod(path, 0o600)  # an older file with a wider mode is narrowed
    db = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last entries in a power cut costs one recompute
    db.executescript(_SCHEMA)
    return db


class SemanticCache:
    """Thread-safe, bounded (`max_entries` per tenant, oldest question of the least recently used settings evicted
    first), in memory and, given `path`, persisted to a SQLite file. Hits are not written back, so after a restart
    "least recently used" means "least recently stored"."""

    def __init__(self, threshold: float = 0.95, max_entries: int = 1024, path: str | os.PathLike[str] | None = None,
                 namespace: str = "", encode: Callable[[Any], str] = json.dumps,
                 decode: Callable[[str], Any] = json.loads):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"cache threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.max_entries = max_entries
        self.namespace = namespace
        self._encode, self._decode = encode, decode
        self._tenants: dict[str, _TenantCache] = {}
        self._lock = threading.Lock()
        self.stats = CacheStats()
        self.path = Path(path) if path is not None else None
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            try:
                self._open()
            except OSError as exc:  # an unwritable serve folder: the server still runs, with a memory-only cache
                log.warning("semantic cache %s cannot be opened (%s); keeping it in memory only", self.path, exc)
                self._db = None

    def _open(self) -> None:
        assert self.path is not None
        try:
            self._db = _open_private(self.path)
            self._load()
        except sqlite3.DatabaseError as exc:  # a damaged file is set aside: a cache is cheap to rebuild
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            log.warning("semantic cache %s unreadable (%s); moved to %s, starting empty", self.path, exc, aside)
            if self._db is not None:
                self._db.close()
            for suffix in ("", "-wal", "-shm"):
                part = self.path.with_name(self.path.name + suffix)
                if part.exists():
                    part.replace(aside.with_name(aside.name + suffix))
            self._tenants.clear()
            self._db = _open_private(self.path)

    # -- the file ---------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        """Read the file back: each tenant's rows of its latest fingerprint in this namespace, in store order."""
        assert self._db is not None
        db = self._db
        db.execute("DELETE FROM entries WHERE fingerprint != (SELECT e.fingerprint FROM entries e WHERE "
                   "e.tenant = entries.tenant ORDER BY e.seq DESC LIMIT 1)")
        evicted: list[int] = []
        for seq, tenant, fingerprint, signature, question, blob, value in db.execute(
                "SELECT seq, tenant, fingerprint, signature, question, vector, value FROM entries WHERE namespace = ?"
                " ORDER BY seq", (self.namespace,)):
            try:
                decoded = self._decode(value)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("semantic cache: dropping an undecodable entry of tenant %s (%s)", tenant, exc)
                evicted.append(seq)
                continue
            bucket = self._tenants.setdefault(tenant, _TenantCache(fingerprint))
            evicted += self._add(bucket, signature, np.frombuffer(blob, dtype=np.float32).copy(), question, decoded,
                                 seq)
        self._delete(evicted)

    def _write(self, action: Callable[[sqlite3.Connection], object]) -> None:
        """Run `action` in one transaction. A failed write (disk full, file removed) leaves the memory cache serving
        and is logged: it must not fail the request whose answer is being cached."""
        if self._db is None:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                action(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            log.warning("semantic cache: write to %s failed: %s", self.path, exc)

    def _delete(self, seqs: list[int]) -> None:
        ids = [(s,) for s in seqs if s is not None]
        if ids:
            self._write(lambda db: db.executemany("DELETE FROM entries WHERE seq = ?", ids))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- memory -----------------------------------------------------------------------------------------------------
    def _add(self, bucket: _TenantCache, signature: str, vector: np.ndarray, question: str, value: Any,
             seq: int | None) -> list[int]:
        """Append one entry; returns the row ids of the entries this evicted (to delete from the file)."""
        unit = _unit(vector)
        group = bucket.entries.get(signature)
        evicted: list[int] = []
        if group is not None and group.matrix.shape[1] != unit.size:  # another embedder: the old vectors are moot
            evicted += [s for _, _, s in group.items if s is not None]
            bucket.size -= len(group.items)
            group = None
        if group is None:
            group = _Group(np.zeros((0, unit.size), np.float32), [])
        bucket.entries[signature] = _Group(np.vstack([group.matrix, unit[None, :]]), [*group.items,
                                                                                     (question, value, seq)])
        bucket.entries.move_to_end(signature)
        bucket.size += 1
        while bucket.size > self.max_entries:  # evict the oldest question of the least recently used settings
            oldest = next(iter(bucket.entries))
            g = bucket.entries[oldest]
            if g.items[0][2] is not None:
                evicted.append(g.items[0][2])
            if len(g.items) <= 1:
                bucket.entries.pop(oldest)
            else:
                bucket.entries[oldest] = _Group(g.matrix[1:], g.items[1:])
            bucket.size -= 1
        return evicted

    def _bucket(self, tenant: str, fingerprint: str) -> _TenantCache:
        bucket = self._tenants.get(tenant)
        if bucket is None or bucket.fingerprint != fingerprint:
            if bucket is not None and bucket.size:
                self.stats.invalidations += 1
                self._write(lambda db: db.execute("DELETE FROM entries WHERE tenant = ?", (tenant,)))
            bucket = self._tenants[tenant] = _TenantCache(fingerprint)
        return bucket

    # -- the API ----------------------------------------------------------------------------------------------------
    def lookup(self, tenant: str, fingerprint: str, signature: str, vector: np.ndarray) -> CacheHit | None:
        """The stored answer of the most similar cached question, if it reaches the threshold."""
        with self._lock:
            bucket = self._bucket(tenant, fingerprint)
            group = bucket.entries.get(signature)
            unit = _unit(vector)
            if group is None or group.matrix.shape[1] != unit.size:
                self.stats.misses += 1
                return None
            scores = group.matrix @ unit
            best = int(np.argmax(scores))
            if float(scores[best]) < self.threshold:
                self.stats.misses += 1
                return None
            bucket.entries.move_to_end(signature)
            self.stats.hits += 1
            question, value, _ = group.items[best]
            return CacheHit(value=value, similarity=float(scores[best]), question=question)

    def store(self, tenant: str, fingerprint: str, signature: str, vector: np.ndarray, question: str,
              value: Any) -> None:
        with self._lock:
            bucket = self._bucket(tenant, fingerprint)
            seq: int | None = None
            if self._db is not None:
                encoded = self._encode(value)  # before any write: a value that cannot be stored is a caller's bug
                row = (tenant, fingerprint, signature, self.namespace, question,
                       _unit(vector).astype(np.float32).tobytes(), encoded, time.time())
                inserted: list[int] = []
                self._write(lambda db: inserted.append(db.execute(
                    "INSERT INTO entries (tenant, fingerprint, signature, namespace, question, vector, value, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row).lastrowid or 0))
                seq = inserted[0] if inserted else None
            self.stats.stores += 1
            self._delete(self._add(bucket, signature, vector, question, value, seq))

    def invalidate(self, tenant: str) -> None:
        with self._lock:
            if self._tenants.pop(tenant, None) is not None:
                self.stats.invalidations += 1
            self._write(lambda db: db.execute("DELETE FROM entries WHERE tenant = ?", (tenant,)))

    def size(self, tenant: str) -> int:
        with self._lock:
            bucket = self._tenants.get(tenant)
            return bucket.size if bucket else 0
