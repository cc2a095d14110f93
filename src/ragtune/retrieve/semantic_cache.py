"""A semantic answer cache, one per tenant: a question close enough (cosine >= threshold) to one already answered
under the same settings gets the stored answer without retrieval or generation.

Entries are keyed by a settings signature (model, prompt, k, filters, decoding, ...) and matched by the query's
embedding. Each tenant's entries remember the fingerprint of that tenant's part of the index they were made under; a
lookup or store with another fingerprint empties that tenant's cache first, so an answer never outlives the documents
it came from, and one tenant's ingest leaves the other tenants' caches warm.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CacheHit:
    value: Any
    similarity: float
    question: str


@dataclass
class _TenantCache:
    fingerprint: str
    # signature -> (matrix of normalised query vectors, list of (question, value)), oldest first
    entries: OrderedDict[str, tuple[np.ndarray, list[tuple[str, Any]]]] = field(default_factory=OrderedDict)
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


class SemanticCache:
    """Thread-safe, bounded (`max_entries` per tenant, oldest settings evicted first), in memory."""

    def __init__(self, threshold: float = 0.95, max_entries: int = 1024):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"cache threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.max_entries = max_entries
        self._tenants: dict[str, _TenantCache] = {}
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def _bucket(self, tenant: str, fingerprint: str) -> _TenantCache:
        bucket = self._tenants.get(tenant)
        if bucket is None or bucket.fingerprint != fingerprint:
            if bucket is not None and bucket.size:
                self.stats.invalidations += 1
            bucket = self._tenants[tenant] = _TenantCache(fingerprint)
        return bucket

    def lookup(self, tenant: str, fingerprint: str, signature: str, vector: np.ndarray) -> CacheHit | None:
        """The stored answer of the most similar cached question, if it reaches the threshold."""
        with self._lock:
            bucket = self._bucket(tenant, fingerprint)
            found = bucket.entries.get(signature)
            if found is None:
                self.stats.misses += 1
                return None
            matrix, values = found
            scores = matrix @ _unit(vector)
            best = int(np.argmax(scores))
            if float(scores[best]) < self.threshold:
                self.stats.misses += 1
                return None
            bucket.entries.move_to_end(signature)
            self.stats.hits += 1
            question, value = values[best]
            return CacheHit(value=value, similarity=float(scores[best]), question=question)

    def store(self, tenant: str, fingerprint: str, signature: str, vector: np.ndarray, question: str,
              value: Any) -> None:
        with self._lock:
            bucket = self._bucket(tenant, fingerprint)
            matrix, values = bucket.entries.get(signature, (np.zeros((0, np.size(vector)), np.float32), []))
            bucket.entries[signature] = (np.vstack([matrix, _unit(vector)[None, :]]), [*values, (question, value)])
            bucket.entries.move_to_end(signature)
            bucket.size += 1
            self.stats.stores += 1
            while bucket.size > self.max_entries:  # evict the oldest question of the least recently used settings
                oldest = next(iter(bucket.entries))
                m, v = bucket.entries[oldest]
                if len(v) <= 1:
                    bucket.entries.pop(oldest)
                else:
                    bucket.entries[oldest] = (m[1:], v[1:])
                bucket.size -= 1

    def invalidate(self, tenant: str) -> None:
        with self._lock:
            if self._tenants.pop(tenant, None) is not None:
                self.stats.invalidations += 1

    def size(self, tenant: str) -> int:
        with self._lock:
            bucket = self._tenants.get(tenant)
            return bucket.size if bucket else 0
