"""API keys and the tenants they belong to, stored in the workspace as hashes only.

A key is `rtk_` + 32 random bytes (`secrets.token_urlsafe`), shown once when it is created. The workspace keeps its
SHA-256, never the key: with 256 bits of entropy a plain hash cannot be brute-forced, so no salt or slow KDF is needed,
and a lookup is one dictionary access. The file is written atomically with mode 0600 and re-read by a running server
when it changes, so `ragtune tenants add` takes effect without a restart. Every change reads, modifies and writes the
file under an exclusive `flock` on `tenants.json.lock` beside it, so two `ragtune tenants add` at once (two shells, a
provisioning script) cannot both start from the same old file and drop each other's keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ragtune.workspace import Workspace

KEY_PREFIX = "rtk_"
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TenantError(ValueError):
    """A tenant or key operation that cannot be done; the message says why."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def tenants_path(workspace: Workspace | str | os.PathLike[str]) -> Path:
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    return ws.root / "serve" / "tenants.json"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the tenant (every read and write is scoped to it) and whether it may curate the
    workspace-wide RAFT data (admin keys only)."""

    tenant: str
    key_id: str
    admin: bool = False


class TenantStore:
    """Add, list and remove tenants and keys; authenticate a presented key."""

    def __init__(self, workspace: Workspace | str | os.PathLike[str]):
        self.path = tenants_path(workspace)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._data: dict = {"tenants": {}}
        self._by_hash: dict[str, Principal] = {}

    # -- reading ---------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        """(Re)read the file when it changed on disk (cheap stat per request)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return
        data = json.loads(self.path.read_text(encoding="utf-8")) if mtime is not None else {"tenants": {}}
        by_hash = {}
        for name, tenant in data.get("tenants", {}).items():
            for key in tenant.get("keys", []):
                by_hash[key["sha256"]] = Principal(name, key["id"], bool(key.get("admin")))
        self._data, self._by_hash, self._mtime = data, by_hash, mtime

    def authenticate(self, key: str | None) -> Principal | None:
        if not key:
            return None
        with self._lock:
            self._load()
            return self._by_hash.get(hash_key(key))

    def list(self) -> list[dict]:
        """One row per tenant: name, created, key ids (never hashes), admin flag."""
        with self._lock:
            self._load()
            return [
                {
                    "tenant": name,
                    "created": t.get("created"),
                    "keys": [k["id"] for k in t.get("keys", [])],
                    "admin": any(k.get("admin") for k in t.get("keys", [])),
                }
                for name, t in sorted(self._data.get("tenants", {}).items())
            ]

    # -- writing ---------------------------------------------------------------------------------------------------
    def add(self, name: str, admin: bool = False) -> str:
        """Create the tenant if needed and a new key for it; returns the key (the only time it exists in clear)."""
        if not TENANT_NAME.match(name):
            raise TenantError(
                f"invalid tenant name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter "
                "or digit"
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._changing():
            tenants = self._data.setdefault("tenants", {})
            tenant = tenants.setdefault(name, {"created": time.time(), "keys": []})
            key_id = f"{name}-{len(tenant['keys']) + 1}-{secrets.token_hex(3)}"
            tenant["keys"].append({"id": key_id, "sha256": hash_key(key), "created": time.time(), "admin": admin})
            self._write()
        return key

    def remove(self, name: str) -> int:
        """Delete a tenant and revoke all its keys (its documents and feedback stay); returns how many keys."""
        with self._changing():
            tenant = self._data.get("tenants", {}).pop(name, None)
            if tenant is None:
                raise TenantError(f"no tenant named {name!r}")
            self._write()
            return len(tenant.get("keys", []))

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the thread lock and the cross-process file lock, with the file freshly read: a change made by another
        process a moment ago (same mtime tick included) is never overwritten."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            self._mtime = None
            self._load()
            yield

    def _write(self) -> None:
        """Atomically, created 0600 (mkstemp) so the hashes are never readable by others, not even for a moment."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f, indent=2, sort_keys=True, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._mtime = None  # re-read (and re-index the hashes) on next use
        self._load()
