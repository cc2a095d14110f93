"""Durable storage of what the server answered and what users said about it: one SQLite file per workspace.

Three tables, all scoped by tenant:
- `responses`: every answer served (question, the exact messages the model saw, the retrieved chunks' text, the
  answer), so feedback can be turned into training data later even after the index has changed;
- `feedback`: one row per thumbs up / down / corrected answer, written and fsynced (WAL, synchronous=FULL) before the
  server replies 200, so a reply means the row survives a crash; an `Idempotency-Key` makes client retries safe;
- `reviews`: curation decisions (accept / edit / reject) on feedback rows and generated RAFT examples.
`ragtune synth from-feedback` reads the same file (schema below is the contract).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ragtune.synth.from_feedback import feedback_db_path
from ragtune.workspace import Workspace

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, created REAL NOT NULL, model TEXT, question TEXT NOT NULL,
  messages TEXT NOT NULL, contexts TEXT NOT NULL, answer TEXT NOT NULL, settings TEXT
);
CREATE INDEX IF NOT EXISTS responses_tenant ON responses(tenant, created);
CREATE TABLE IF NOT EXISTS feedback (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, tenant TEXT NOT NULL, created REAL NOT NULL,
  response_id TEXT, question TEXT NOT NULL, answer TEXT NOT NULL, rating TEXT, correction TEXT, comment TEXT,
  relevant_chunk_ids TEXT, irrelevant_chunk_ids TEXT, idempotency_key TEXT,
  UNIQUE(tenant, idempotency_key)
);
CREATE INDEX IF NOT EXISTS feedback_tenant ON feedback(tenant, seq);
CREATE TABLE IF NOT EXISTS reviews (
  kind TEXT NOT NULL, item_id TEXT NOT NULL, tenant TEXT NOT NULL, status TEXT NOT NULL, edits TEXT,
  updated REAL NOT NULL, PRIMARY KEY (kind, item_id, tenant)
);
"""

WORKSPACE_WIDE = "*"  # the tenant column of reviews on workspace-wide items (generated RAFT examples)
REVIEW_STATUSES = ("accepted", "edited", "rejected")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


PRIVATE = 0o600  # every tenant's questions, answers and chunks: readable by the server's user only
MAX_PAGE, MAX_OFFSET = 1_000, 2**31  # listing bounds; SQLite refuses integers past 2**63 with an OverflowError


def make_private(path: Path) -> None:
    """Create `path` 0600 if it is missing (whatever the umask), or take an existing file's other bits away."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE)
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE:
            os.fchmod(fd, PRIVATE)
    finally:
        os.close(fd)


class FeedbackStore:
    """One connection shared by the server's threads behind a lock (SQLite serialises writers anyway)."""

    def __init__(self, workspace: Workspace | str | os.PathLike[str] | None = None, path: str | Path | None = None):
        if path is None:
            if workspace is None:
                raise ValueError("pass a workspace or a path")
            path = feedback_db_path(workspace)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # 0600 before SQLite opens it: SQLite gives the -wal and -shm files the database file's mode
        make_private(self.path)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # the WAL is fsynced at every commit: a 200 means on disk
        self._db.executescript(SCHEMA)
        for suffix in ("-wal", "-shm"):  # left by an older version or another process with a looser umask
            side = self.path.with_name(self.path.name + suffix)
            if side.exists() and side.stat().st_mode & 0o777 != PRIVATE:
                side.chmod(PRIVATE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    # -- responses -------------------------------------------------------------------------------------------------
    def record_response(self, response_id: str, tenant: str, model: str, question: str, messages: list[dict],
                        contexts: list[dict], answer: str, settings: dict[str, Any]) -> None:
        self._write(
            "INSERT INTO responses (id, tenant, created, model, question, messages, contexts, answer, settings) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (response_id, tenant, time.time(), model, question, json.dumps(messages), json.dumps(contexts), answer,
             json.dumps(settings)),
        )

    def get_response(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        """The response only if it belongs to `tenant`: another tenant's id reads as unknown."""
        rows = self._read("SELECT * FROM responses WHERE id = ? AND tenant = ?", (response_id, tenant))
        return rows[0] if rows else None

    # -- feedback --------------------------------------------------------------------------------------------------
    def add_feedback(self, tenant: str, question: str, answer: str, response_id: str | None = None,
                     rating: str | None = None, correction: str | None = None, comment: str | None = None,
                     relevant_chunk_ids: list[str] | None = None, irrelevant_chunk_ids: list[str] | None = None,
                     idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Insert one feedback row (durable on return). Returns (row, created); a repeated idempotency key returns the
        row stored the first time with created=False."""
        if idempotency_key:
            earlier = self._read("SELECT * FROM feedback WHERE tenant = ? AND idempotency_key = ?",
                                 (tenant, idempotency_key))
            if earlier:
                return earlier[0], False
        feedback_id = new_id("fb")
        try:
            self._write(
                "INSERT INTO feedback (id, tenant, created, response_id, question, answer, rating, correction, "
                "comment, relevant_chunk_ids, irrelevant_chunk_ids, idempotency_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (feedback_id, tenant, time.time(), response_id, question, answer, rating, correction, comment,
                 json.dumps(relevant_chunk_ids or []), json.dumps(irrelevant_chunk_ids or []), idempotency_key),
            )
        except sqlite3.IntegrityError:  # the same key raced in from a parallel retry
            return self._read("SELECT * FROM feedback WHERE tenant = ? AND idempotency_key = ?",
                              (tenant, idempotency_key))[0], False
        return self._read("SELECT * FROM feedback WHERE id = ?", (feedback_id,))[0], True

    def count_feedback(self, tenant: str | None = None) -> int:
        if tenant is None:
            return int(self._read("SELECT COUNT(*) AS n FROM feedback")[0]["n"])
        return int(self._read("SELECT COUNT(*) AS n FROM feedback WHERE tenant = ?", (tenant,))[0]["n"])

    def list_feedback(self, tenant: str, status: str = "all", limit: int = 50, offset: int = 0
                      ) -> list[dict[str, Any]]:
        """Feedback rows of one tenant, oldest first, each with its review (status 'pending' when none) and the
        chunks the answer was given. `limit` and `offset` outside [0, MAX_PAGE] / [0, MAX_OFFSET] raise ValueError."""
        if not (0 <= limit <= MAX_PAGE and 0 <= offset <= MAX_OFFSET):
            raise ValueError(f"limit must lie in 0..{MAX_PAGE} and offset in 0..{MAX_OFFSET}")
        where, args = "f.tenant = ?", [tenant]
        if status == "pending":
            where += " AND r.status IS NULL"
        elif status != "all":
            where += " AND r.status = ?"
            args.append(status)
        rows = self._read(
            "SELECT f.*, r.status AS review_status, r.edits AS review_edits, s.contexts AS contexts "
            "FROM feedback f LEFT JOIN reviews r ON r.kind = 'feedback' AND r.item_id = f.id AND r.tenant = f.tenant "
            "LEFT JOIN responses s ON s.id = f.response_id AND s.tenant = f.tenant "
            f"WHERE {where} ORDER BY f.seq LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return rows

    def feedback_ids(self, tenant: str) -> set[str]:
        return {r["id"] for r in self._read("SELECT id FROM feedback WHERE tenant = ?", (tenant,))}

    # -- reviews ---------------------------------------------------------------------------------------------------
    def review(self, kind: str, item_id: str, tenant: str, status: str, edits: dict[str, Any] | None = None) -> None:
        if status not in REVIEW_STATUSES:
            raise ValueError(f"status must be one of {', '.join(REVIEW_STATUSES)}")
        self._write(
            "INSERT INTO reviews (kind, item_id, tenant, status, edits, updated) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(kind, item_id, tenant) DO UPDATE SET status = excluded.status, edits = excluded.edits, "
            "updated = excluded.updated",
            (kind, item_id, tenant, status, json.dumps(edits) if edits else None, time.time()),
        )

    def reviews(self, kind: str, tenant: str) -> dict[str, dict[str, Any]]:
        rows = self._read("SELECT item_id, status, edits FROM reviews WHERE kind = ? AND tenant = ?", (kind, tenant))
        return {r["item_id"]: {"status": r["status"], "edits": json.loads(r["edits"]) if r["edits"] else None}
                for r in rows}
