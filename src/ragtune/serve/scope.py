"""What a served request may see: the tenant scope of its search, and the document names it is shown.

- Scope: the tenant comes from the API key alone and becomes the `tenant` filter, which the store compares on the
  typed tenant column that `ingest --tenant` set (`ragtune.index.store.filter_sql`), never on a document's metadata.
  A request's own filters are ANDed with it and can only narrow; a request filter naming `tenant` is refused (400)
  rather than silently dropped, so a client learns at once that the key decides.
- Names: stored sources are absolute paths on the server. Responses show them relative to the ingest root they were
  ingested from (the longest root the ingest manifest records under `extra.roots`), else by file name, so an answer
  never reveals the server's directory layout. A `source` filter may use that shown form.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import PurePath

from ragtune.workspace import Workspace

TENANT = "tenant"


class ScopeError(ValueError):
    """A request tried to choose its tenant scope (only the API key does)."""


def check_request_filters(filters: dict[str, str]) -> None:
    """Refuse a request filter that names the tenant (in any case or spacing): the key alone decides it."""
    for key in filters:
        if key.strip().lower() == TENANT:
            raise ScopeError(f"filter {key!r} is not allowed: the API key decides the tenant, and request filters can "
                             "only narrow within it (a document's own `tenant` field is `meta.tenant`)")


def display_source(source: str, roots: Sequence[str] = ()) -> str:
    """`source` relative to the longest of `roots` it lies under (posix separators), else its file name; a source
    that is not an absolute path (a URL, a data set name) is shown as stored."""
    path = PurePath(source)
    if not path.is_absolute():
        return source
    best: tuple[int, str] | None = None
    for root in roots:
        base = PurePath(root)
        if path == base:
            shown = path.name
        elif base in path.parents:
            shown = path.relative_to(base).as_posix()
        else:
            continue
        if best is None or len(str(base)) > best[0]:
            best = (len(str(base)), shown)
    return best[1] if best else path.name


class SourceNames:
    """Display forms of stored sources, with the ingest roots re-read when the ingest manifest changes."""

    def __init__(self, workspace: Workspace):
        self.path = workspace.manifest_path("ingest")
        self.workspace = workspace
        self._stamp: tuple[int, int] | None = None
        self._roots: list[str] = []
        self._shown: dict[str, str] = {}

    def roots(self) -> list[str]:
        try:
            stat = self.path.stat()
        except OSError:
            return self._roots
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            manifest = self.workspace.read_manifest("ingest") or {}
            extra = manifest.get("extra") or {}
            roots = extra.get("roots") if isinstance(extra, dict) else None
            self._roots = [str(r) for r in roots if isinstance(r, str)] if isinstance(roots, list) else []
            self._stamp = stamp
            self._shown = {}
        return self._roots

    def show(self, source: str) -> str:
        roots = self.roots()
        shown = self._shown.get(source)
        if shown is None:
            if len(self._shown) > 100_000:
                self._shown = {}
            shown = self._shown[source] = display_source(source, roots)
        return shown

    def stored(self, value: str, sources: Iterable[str]) -> str:
        """The stored source a request's `source` filter means: itself if stored, else the one source (of the
        tenant's, passed in) shown as `value`. None matching leaves `value` (it then matches nothing)."""
        known = set(sources)
        if value in known:
            return value
        matches = sorted(s for s in known if self.show(s) == value)
        if len(matches) > 1:
            raise ValueError(f"source {value!r} names {len(matches)} documents; filter by doc_id instead")
        return matches[0] if matches else value
