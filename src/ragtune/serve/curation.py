"""The curation page and its API: review feedback and generated RAFT examples, accept / edit / reject, see progress.

`GET /curate` serves one static HTML page (`static/curation.html`, plain JS, no build step). The page asks for an API
key and calls the JSON routes below with it, so the same tenant isolation applies: a key sees and reviews its own
tenant's feedback only; generated RAFT examples (workspace-wide `synth/raft.jsonl`) need an admin key
(`ragtune tenants add NAME --admin`). Decisions go to the `reviews` table; `ragtune synth from-feedback` applies them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import HTMLResponse

from ragtune.serve.feedback import WORKSPACE_WIDE
from ragtune.serve.pipeline import RagPipeline
from ragtune.serve.schemas import MAX_ID, MAX_OFFSET, MAX_PAGE, APIError, ReviewRequest, clip
from ragtune.serve.tenants import Principal
from ragtune.synth.records import RaftExample
from ragtune.synth.store import read_raft

Kind = Literal["feedback", "raft"]
STATUS_OF_ACTION = {"accept": "accepted", "edit": "edited", "reject": "rejected"}
EDITABLE = {"feedback": ("correction",), "raft": ("question", "answer", "cot_answer")}


class RaftSource:
    """The workspace's generated RAFT examples, re-read when the file changes."""

    def __init__(self, pipeline: RagPipeline):
        self.path = pipeline.workspace.root / "synth" / "raft.jsonl"
        self._stamp: tuple[int, int] | None = None
        self._examples: list[RaftExample] = []

    def examples(self) -> list[RaftExample]:
        if not self.path.exists():
            return []
        stat = self.path.stat()
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            self._examples, self._stamp = read_raft(self.path), (stat.st_mtime_ns, stat.st_size)
        return self._examples


def _progress(statuses: list[str | None]) -> dict[str, int]:
    counts = {"total": len(statuses), "accepted": 0, "edited": 0, "rejected": 0, "pending": 0}
    for status in statuses:
        counts[status or "pending"] += 1
    counts["reviewed"] = counts["total"] - counts["pending"]
    return counts


def _feedback_item(row: dict[str, Any]) -> dict[str, Any]:
    edits = json.loads(row["review_edits"]) if row.get("review_edits") else {}
    contexts = json.loads(row["contexts"]) if row.get("contexts") else []
    return {
        "kind": "feedback", "id": row["id"], "status": row.get("review_status") or "pending",
        "question": row["question"], "answer": row["answer"], "rating": row["rating"],
        "correction": edits.get("correction", row["correction"]), "comment": row["comment"],
        "contexts": [{"chunk_id": c["chunk_id"], "title": c.get("title", ""), "source": c.get("source", ""),
                      "text": c.get("text", "")} for c in contexts],
        "created": row["created"],
    }


def _raft_item(example: RaftExample, review: dict[str, Any] | None) -> dict[str, Any]:
    edits = (review or {}).get("edits") or {}
    return {
        "kind": "raft", "id": example.id, "status": (review or {}).get("status") or "pending",
        "question": edits.get("question", example.question), "answer": edits.get("answer", example.answer),
        "cot_answer": edits.get("cot_answer", example.cot_answer), "oracle_kept": example.oracle_kept,
        "contexts": [{"chunk_id": d.doc_id, "title": d.title, "text": d.text, "is_oracle": d.is_oracle}
                     for d in example.documents],
    }


def curation_router(pipeline: RagPipeline, principal: Callable[..., Principal]) -> APIRouter:
    router = APIRouter()
    store = pipeline.feedback
    raft = RaftSource(pipeline)

    def require_admin(who: Principal) -> None:
        if not who.admin:
            raise APIError(403, "reviewing generated RAFT examples needs an admin key (`ragtune tenants add NAME "
                           "--admin`)", type="permission_error", code="admin_required")

    def summary(who: Principal) -> dict[str, Any]:
        feedback_reviews = store.reviews("feedback", who.tenant)
        statuses = [(feedback_reviews.get(i) or {}).get("status") for i in store.feedback_ids(who.tenant)]
        out: dict[str, Any] = {"tenant": who.tenant, "admin": who.admin, "feedback": _progress(statuses)}
        if who.admin:
            reviews = store.reviews("raft", WORKSPACE_WIDE)
            out["raft"] = _progress([(reviews.get(e.id) or {}).get("status") for e in raft.examples()])
        return out

    @router.get("/curate", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        html = resources.files("ragtune.serve").joinpath("static/curation.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @router.get("/v1/curation/summary")
    async def get_summary(who: Principal = Depends(principal)) -> dict[str, Any]:
        return await asyncio.to_thread(summary, who)

    @router.get("/v1/curation/items")
    async def items(kind: Kind = "feedback", status: str = Query("pending", pattern="^(pending|all|accepted|edited|"
                                                                                        "rejected)$"),
                    limit: int = Query(20, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                    who: Principal = Depends(principal)) -> dict[str, Any]:
        if kind == "feedback":
            rows = await asyncio.to_thread(store.list_feedback, who.tenant, status, limit, offset)
            data = [_feedback_item(r) for r in rows]
        else:
            require_admin(who)
            reviews = store.reviews("raft", WORKSPACE_WIDE)
            all_items = [_raft_item(e, reviews.get(e.id)) for e in raft.examples()]
            data = [i for i in all_items if status == "all" or i["status"] == status][offset: offset + limit]
        return {"object": "list", "data": data, "summary": await asyncio.to_thread(summary, who)}

    @router.post("/v1/curation/items/{kind}/{item_id}")
    async def decide(kind: Kind, item_id: Annotated[str, Path(max_length=MAX_ID)], body: ReviewRequest,
                     who: Principal = Depends(principal)) -> dict[str, Any]:
        if kind == "feedback":
            if item_id not in await asyncio.to_thread(store.feedback_ids, who.tenant):
                raise APIError(404, f"no feedback {clip(item_id)!r} for this API key", code="item_not_found")
            scope = who.tenant
        else:
            require_admin(who)
            if item_id not in {e.id for e in raft.examples()}:
                raise APIError(404, f"no RAFT example {clip(item_id)!r} in this workspace", code="item_not_found")
            scope = WORKSPACE_WIDE
        unknown = set(body.edits) - set(EDITABLE[kind])
        if unknown:
            raise APIError(400, f"cannot edit {clip(', '.join(sorted(unknown)))} of a {kind} item; editable: "
                           f"{', '.join(EDITABLE[kind])}", param="edits")
        if body.action == "edit" and not body.edits:
            raise APIError(400, "action 'edit' needs edits", param="edits")
        await asyncio.to_thread(store.review, kind, item_id, scope, STATUS_OF_ACTION[body.action],
                                body.edits if body.action == "edit" else None)
        return {"id": item_id, "kind": kind, "status": STATUS_OF_ACTION[body.action],
                "summary": await asyncio.to_thread(summary, who)}

    return router
