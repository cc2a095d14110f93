"""Content hashes and stable ids. One place, so every stage hashes the same way."""

from __future__ import annotations

import hashlib
from pathlib import Path


def text_hash(text: str) -> str:
    """sha256 of UTF-8 text, hex."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def short_id(*parts: str, length: int = 16) -> str:
    """A stable short id from several strings (sha1; collisions are irrelevant at 64 bits for a corpus)."""
    h = hashlib.sha1()
    for part in parts:
        h.update(part.encode("utf-8", errors="surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()[:length]


def file_hash(path: Path, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()
