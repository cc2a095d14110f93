"""The tenant-isolation attack suite: documents that claim other tenants, documents with no tenant, filters that try
to widen the scope, and other tenants' ids, thrown at the real store, every search option and a real server.

Used by tests/test_tenant_isolation.py (which asserts zero leaks) and callable by a benchmark:

    sys.path.insert(0, "tests"); from tenant_attacks import run_attacks
    run_attacks()  # -> {"attacks": N, "leaks": M, ...}; parts=("store", "search") skips the server

A leak is any chunk, text, document id or cached answer of another tenant (or of no tenant) reaching a tenant, or a
request on another tenant's id that does not read as unknown. Each group's documents carry a marker word of their own
(`acmesecret`, `globexsecret`, `orphansecret`), so foreign text is caught even inside a window or a joined parent.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TENANTS = ("acme", "globex")
MARKERS = {"acme": "acmesecret", "globex": "globexsecret", None: "orphansecret"}
OTHER = {"acme": "globex", "globex": "acme"}
SQLISH = ["x' OR '1'='1", "' OR tenant IS NULL OR '1'='1", "\\' OR 1=1 --", "globex') OR ('1'='1",
          "acme' OR tenant = 'globex"]


def _records(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _sentences(marker: str, topic: str) -> str:
    """A few sentences (so sentence windows and parents have neighbours), every one carrying the marker."""
    return (f"This {marker} overview covers the {topic}. The {marker} vault code of the {topic} is kept in the "
            f"archive. Only staff may read the {marker} budget of the {topic}. The {topic} ledger lists every "
            f"{marker} payment.")


@dataclass
class AttackWorkspace:
    ws: Path
    docs: dict[str | None, set[str]]  # tenant (None: ingested without one) -> doc ids
    sources: dict[str | None, set[str]]  # tenant -> stored (absolute) sources


def build_attack_workspace(root: Path, embedder) -> AttackWorkspace:
    """acme's records claim globex (and every reserved field); globex's claim acme; untagged records claim both."""
    from ragtune.config import IngestConfig
    from ragtune.index.ingest import ingest
    from ragtune.index.levels import build_level
    from ragtune.index.store import ChunkStore

    ws = root / "ws"
    globex_txt = root / "globex" / "whale.txt"
    globex_txt.parent.mkdir(parents=True, exist_ok=True)
    globex_txt.write_text(_sentences("globexsecret", "Globex Whale") + " The whale report cites the Acme Vault Ledger "
                          "and the Orphan Archive by name.\n", encoding="utf-8")
    a = "acmesecret"
    _records(root / "acme" / "records.jsonl", [
        {"id": "a1", "title": "Acme Vault Ledger", "text": _sentences(a, "Acme vault") + " See the Globex Whale.",
         "tenant": "globex"},
        {"id": "a2", "text": _sentences(a, "Acme payroll"), "Tenant": "globex", "TENANT": "globex"},
        {"id": "a3", "text": _sentences(a, "Acme roadmap"), "meta.tenant": "globex", "tags": "tenant=globex"},
        {"id": "a4", "text": _sentences(a, "Acme merger"), "version": "globex-v1", "source": str(globex_txt),
         "doc_id": "globex-doc", "title": "Globex Whale"},
        {"doc_id": "globex-doc-2", "text": _sentences(a, "Acme pricing"), "tenant": ""},
        {"id": "a6", "text": _sentences(a, "Acme lawsuit"), "tenant": None, "meta": {"tenant": "globex"}},
    ])
    _records(root / "globex" / "records.jsonl", [
        {"id": "g1", "title": "Globex Orbit", "text": _sentences("globexsecret", "Globex orbit"), "tenant": "acme"},
        {"id": "g2", "text": _sentences("globexsecret", "Globex drill"), "Tenant": "acme", "version": "acme-v1"},
    ])
    _records(root / "orphan" / "records.jsonl", [
        {"id": "o1", "title": "Orphan Archive", "text": _sentences("orphansecret", "orphan archive"),
         "tenant": "globex"},
        {"id": "o2", "text": _sentences("orphansecret", "orphan vault"), "tenant": "acme"},
        {"id": "o3", "text": _sentences("orphansecret", "orphan budget")},
    ])
    small = dict(chunk_size=24)  # several chunks a document: parents, windows and joins have something to cross
    ingest([root / "acme"], ws, IngestConfig(tenant="acme", **small), embedder=embedder)
    ingest([root / "globex"], ws, IngestConfig(tenant="globex", **small), embedder=embedder)
    ingest([root / "orphan"], ws, IngestConfig(**small), embedder=embedder)  # no --tenant: served to nobody
    for level in ("sentences", "summaries"):
        build_level(ws, level, embedder=embedder)
    table = ChunkStore(ws).scan(["doc_id", "tenant", "source"])
    docs: dict[str | None, set[str]] = {}
    sources: dict[str | None, set[str]] = {}
    for doc, tenant, source in zip(table["doc_id"].to_pylist(), table["tenant"].to_pylist(),
                                   table["source"].to_pylist(), strict=True):
        docs.setdefault(tenant or None, set()).add(doc)
        sources.setdefault(tenant or None, set()).add(source)
    return AttackWorkspace(ws, docs, sources)


@dataclass
class Report:
    attacks: int = 0
    hits: int = 0  # results the attacks got back (their own tenant's): zero leaks over zero hits proves nothing
    empty: list[str] = field(default_factory=list)  # scoped searches without extra filters that found nothing
    leaks: list[str] = field(default_factory=list)
    by_part: dict[str, int] = field(default_factory=dict)

    def attack(self, part: str, leaked: str | None) -> None:
        self.attacks += 1
        self.by_part[part] = self.by_part.get(part, 0) + 1
        if leaked:
            self.leaks.append(f"{part}: {leaked}")

    def summary(self) -> dict[str, Any]:
        return {"attacks": self.attacks, "leaks": len(self.leaks), "hits": self.hits, "empty": len(self.empty),
                "by_part": dict(self.by_part),
                "examples": self.leaks[:20]}


def foreign(viewer: str, aw: AttackWorkspace, payload: Any, doc_ids: Iterable[str] = ()) -> str | None:
    """What in `payload` (any JSON-able value) belongs to another tenant or to none: a marker word or a doc id."""
    text = json.dumps(payload, default=str, ensure_ascii=False).lower()
    for owner, marker in MARKERS.items():
        if owner != viewer and marker in text:
            return f"{marker} in {text[:160]}"
    own = aw.docs.get(viewer, set())
    alien = [d for d in doc_ids if d not in own]
    return f"foreign doc ids {alien[:3]}" if alien else None


def hostile_filters(viewer: str, aw: AttackWorkspace) -> list[dict[str, str]]:
    """Request filters that try to widen (other tenants' ids and sources, spoofed metadata, SQL-ish values); in a
    request they are ANDed with the key's tenant, so each may only narrow."""
    other = OTHER[viewer]
    other_doc = sorted(aw.docs[other])[0]
    orphan_doc = sorted(aw.docs[None])[0]
    other_source = sorted(aw.sources[other])[0]
    filters = [{}, {"meta.tenant": viewer}, {"meta.tenant": other}, {"Tenant": viewer}, {"TENANT": viewer},
               {"meta.Tenant": viewer}, {"version": f"{viewer}-v1"}, {"version": f"{other}-v1"},
               {"doc_id": other_doc}, {"doc_id": orphan_doc}, {"source": other_source},
               {"meta.source": other_source}, {"title": "Acme Vault Ledger"}, {"title": "Orphan Archive"},
               {"meta.doc_id": "globex-doc"}, {"tags": "tenant=globex"}]
    filters += [{"title": v} for v in SQLISH] + [{"doc_id": v} for v in SQLISH[:2]] + [{"meta.tenant": SQLISH[4]}]
    return filters


def query_for(viewer: str) -> str:
    """A question full of the other groups' words: a leak would rank first. 'overview' routes to summaries."""
    words = " ".join(m for owner, m in MARKERS.items() if owner != viewer)
    return f"overview of the {words} vault code budget archive ledger Acme Vault Ledger Orphan Archive"


SEARCH_CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {}, "lancedb": {"dense_backend": "lancedb"}, "window": {"window": 2}, "parent-chunk": {"parent": "chunk"},
    "parent-document": {"parent": "document"}, "link": {"transform": "link"}, "hop+link": {"transform": "hop+link"},
    "window+hop+link": {"window": 1, "transform": "hop+link"},
    "parent-document+link": {"parent": "document", "transform": "link"}, "route-summaries": {"route": "auto"},
    "link-lancedb": {"transform": "link", "dense_backend": "lancedb"},
}
LEVELS = ("sentences", "summaries")


def search_attacks(aw: AttackWorkspace, embedder, report: Report) -> None:
    """Every hostile filter x mode x search option x level, in process on the real store, scoped as serve scopes."""
    from ragtune.config import SearchConfig
    from ragtune.retrieve.search import Searcher

    searchers = {name: Searcher(aw.ws, SearchConfig(candidates=20, link_hits=3, **cfg), embedder=embedder)
                 for name, cfg in SEARCH_CONFIGS.items()}
    searchers |= {f"level-{lv}": Searcher(aw.ws, SearchConfig(candidates=20), embedder=embedder, level=lv)
                  for lv in LEVELS}
    for name, searcher in searchers.items():
        for viewer in TENANTS:
            query = query_for(viewer)
            for mode in ("dense", "bm25", "hybrid"):
                for extra in hostile_filters(viewer, aw):
                    scoped = {**extra, "tenant": viewer}  # what RagPipeline.search passes
                    hits = searcher.search(query, k=8, mode=mode, filters=scoped)
                    report.hits += len(hits)
                    if not extra and not hits:
                        report.empty.append(f"{name} {viewer} {mode}")
                    trace = searcher.pipeline.last_trace.get("links") or []
                    linked = [e["doc_id"] for hop in trace for e in hop["linked"]]
                    leaked = foreign(viewer, aw, [h.model_dump() for h in hits] + [trace],
                                     [h.doc_id for h in hits] + linked)
                    report.attack(f"search:{name}", leaked and f"{viewer} {mode} {extra}: {leaked}")


def store_attacks(aw: AttackWorkspace, report: Report) -> None:
    """The store's own reads (scan, count: what fingerprints and dataset stages use) on every table."""
    from ragtune.index.store import ChunkStore

    for table in ("chunks", *LEVELS):
        store = ChunkStore(aw.ws, table)
        for viewer in TENANTS:
            for extra in hostile_filters(viewer, aw):
                scoped = {**extra, "tenant": viewer}
                rows = store.scan(["doc_id", "tenant", "text"], scoped).to_pylist()
                report.hits += len(rows)
                wrong = [r for r in rows if r["tenant"] != viewer]
                leaked = foreign(viewer, aw, rows, [r["doc_id"] for r in rows]) or (wrong and f"rows {wrong[:2]}")
                if store.count(scoped) != len(rows):
                    leaked = leaked or f"count {store.count(scoped)} != scan {len(rows)}"
                report.attack(f"store:{table}", leaked and f"{viewer} {extra}: {leaked}")


def http_attacks(aw: AttackWorkspace, url: str, keys: dict[str, str], report: Report) -> None:
    """The same against a running server: search and chat with hostile filters and body fields, the semantic cache,
    feedback on another tenant's response id and curation of another tenant's feedback id."""
    import httpx

    def post(who: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {keys[who]}"}, timeout=120)

    def chat(who: str, question: str, extra: dict[str, Any] | None = None) -> httpx.Response:
        body = {"messages": [{"role": "user", "content": question}], "max_tokens": 1, **(extra or {})}
        body["ragtune"] = {"k": 3, **body.get("ragtune", {})}  # a short prompt: the citations are what is checked
        return post(who, "/v1/chat/completions", body)

    def hits_leak(viewer: str, r: httpx.Response, key: str) -> str | None:
        if r.status_code != 200:
            return None
        data = r.json()
        items = data.get(key) or []
        report.hits += len(items)
        return foreign(viewer, aw, [data.get("data"), data.get("citations"), data.get("flagged")],
                       [i["doc_id"] for i in items])

    for viewer in TENANTS:
        other, query = OTHER[viewer], query_for(viewer)
        for mode in ("dense", "bm25", "hybrid"):
            for extra in hostile_filters(viewer, aw):
                r = post(viewer, "/v1/search", {"query": query, "k": 8, "mode": mode, "filters": extra})
                leaked = hits_leak(viewer, r, "data") or (r.status_code not in (200, 400) and f"status {r.status_code}")
                if not extra and not (r.status_code == 200 and r.json()["data"]):
                    report.empty.append(f"http {viewer} {mode}: {r.status_code}")
                report.attack("http:search", leaked and f"{viewer} {mode} {extra}: {leaked}")
        for widen in ({"tenant": other}, {"tenant": viewer}, {"TENANT": other}, {" tenant ": other},
                      {"tenant": SQLISH[1]}):
            r = post(viewer, "/v1/search", {"query": query, "k": 8, "filters": widen})
            report.attack("http:search-tenant-filter", r.status_code != 400 and  # refused, so nothing can come back
                          f"{viewer} {widen}: status {r.status_code} {hits_leak(viewer, r, 'data')} {r.text[:200]}")
            r = chat(viewer, query, {"ragtune": {"filters": widen, "cache": False}})
            report.attack("http:chat-tenant-filter", r.status_code != 400 and
                          f"{viewer} {widen}: status {r.status_code} {hits_leak(viewer, r, 'citations')} "
                          f"{r.text[:200]}")
        for body in ({"tenant": other, "user": other, "ragtune": {"cache": False}},
                     {"ragtune": {"filters": {"meta.tenant": viewer}, "cache": False}},
                     {"ragtune": {"filters": {"title": SQLISH[0]}, "cache": False}}):
            r = chat(viewer, query, body)
            leaked = hits_leak(viewer, r, "citations") or (r.status_code != 200 and f"status {r.status_code}")
            report.attack("http:chat", leaked and f"{viewer} {body}: {leaked} {r.text[:200]}")
    # the semantic cache: acme's cached answer never answers globex (nor the reverse)
    for first, second in (("acme", "globex"), ("globex", "acme")):
        question = f"What is the {MARKERS[first]} vault code of the archive?"
        chat(first, question)
        r = chat(second, question)
        leaked = (r.status_code == 200 and r.json()["ragtune"]["cache"]["hit"] and "a cache hit") or \
            hits_leak(second, r, "citations")
        report.attack("http:cache", leaked and f"{second} got {first}'s cache entry ({leaked}): {r.text[:200]}")
    # ids of other tenants: feedback on another tenant's response, curation of another tenant's feedback
    ids: dict[str, dict[str, str]] = {}
    for tenant in TENANTS:
        response = chat(tenant, f"What is the {MARKERS[tenant]} budget?", {"ragtune": {"cache": False}}).json()["id"]
        fb = post(tenant, "/v1/feedback", {"response_id": response, "rating": "up"}).json()["id"]
        ids[tenant] = {"response": response, "feedback": fb}
    for viewer in TENANTS:
        mine = ids[OTHER[viewer]]
        r = post(viewer, "/v1/feedback", {"response_id": mine["response"], "rating": "down", "correction": "x"})
        report.attack("http:feedback-id", r.status_code != 404 and f"{viewer} feedback on {mine['response']}: "
                      f"{r.status_code} {r.text[:200]}")
        for action in ("accept", "reject"):
            r = post(viewer, f"/v1/curation/items/feedback/{mine['feedback']}", {"action": action})
            report.attack("http:curation-id", r.status_code != 404 and f"{viewer} {action} {mine['feedback']}: "
                          f"{r.status_code} {r.text[:200]}")
        r = httpx.get(url + "/v1/curation/items", params={"kind": "feedback", "status": "all", "limit": 200},
                      headers={"Authorization": f"Bearer {keys[viewer]}"}, timeout=60)
        listed = {i["id"] for i in r.json()["data"]} if r.status_code == 200 else set()
        leaked = (mine["feedback"] in listed and "other tenant's feedback listed") or \
            (r.status_code == 200 and foreign(viewer, aw, r.json()["data"]))
        report.attack("http:curation-list", leaked and f"{viewer}: {leaked}")


def start_server(aw: AttackWorkspace) -> tuple[Any, dict[str, str]]:
    """A real `ragtune serve` on 127.0.0.1 over the attack workspace, with sentence parents, hop and links on, so the
    served path runs through every expansion; and one key per tenant."""
    from serve_support import Server

    from ragtune.serve.tenants import TenantStore

    store = TenantStore(aw.ws)
    keys = {t: store.add(t) for t in TENANTS}
    config = aw.ws.parent / "serve-attacks.yaml"
    config.write_text("search:\n  parent: document\n  transform: hop+link\n  candidates: 20\nserve:\n"
                      "  default_max_tokens: 2\n", encoding="utf-8")
    return Server(aw.ws, "--config", str(config)), keys


PARTS = ("store", "search", "http")


def run_attacks(root: str | Path | None = None, embedder=None, parts: Iterable[str] = PARTS) -> dict[str, Any]:
    """Build the hostile workspace (under `root`, else a temporary folder), run the attacks of `parts` ("http" starts
    a real server, ~30 s) and return {"attacks": N, "leaks": M, "by_part": {...}, "examples": [...]}."""
    parts = set(parts)
    if unknown := parts - set(PARTS):
        raise ValueError(f"unknown attack parts {sorted(unknown)}; choose from {PARTS}")
    if embedder is None:
        from ragtune.index.embedding import Embedder

        embedder = Embedder()
    with tempfile.TemporaryDirectory(prefix="ragtune-attacks-") as tmp:
        aw = build_attack_workspace(Path(root) if root else Path(tmp), embedder)
        report = Report()
        if "store" in parts:
            store_attacks(aw, report)
        if "search" in parts:
            search_attacks(aw, embedder, report)
        if "http" in parts:
            server, keys = start_server(aw)
            try:
                http_attacks(aw, server.url, keys, report)
            finally:
                server.stop()
        return report.summary()
