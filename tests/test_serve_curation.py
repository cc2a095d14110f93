"""The curation page in headless Chromium with real clicks: log in with a key, accept / edit / reject feedback and a
generated RAFT example, watch the progress, and check `synth from-feedback` applies every decision."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serve_support import Server, build_workspace

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                 if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium found (apt-get install chromium); the curation "
                                "page test needs a real browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _raft_file(ws: Path) -> None:
    from ragtune.records import ContextDoc
    from ragtune.synth.records import Group, RaftExample
    from ragtune.synth.store import GroupFile

    with GroupFile(ws / "synth" / "raft.jsonl") as f:
        for i, (q, a) in enumerate([("What color is the fox?", "orange"), ("Where does the owl nest?", "oak trees")]):
            doc = ContextDoc(doc_id=f"c{i}", text=f"Some text about {a}.", is_oracle=True)
            e = RaftExample(id=f"raft-{i}", group_id=f"g{i}", question=q, documents=[doc], oracle_ids=[f"c{i}"],
                            oracle_kept=True, cot_answer=f"##begin_quote##{a}##end_quote##\n<ANSWER>: {a}", answer=a)
            f.append(Group(group_id=f"g{i}", examples=[e.model_dump()]))


def test_review_feedback_and_raft_examples_by_clicking(tmp_path, embedder):
    from playwright.sync_api import expect, sync_playwright

    from ragtune.serve.feedback import FeedbackStore
    from ragtune.serve.tenants import TenantStore
    from ragtune.synth.from_feedback import build_from_feedback

    ws = build_workspace(tmp_path, embedder)
    key = TenantStore(ws).add("acme", admin=True)
    TenantStore(ws).add("globex")
    store = FeedbackStore(ws)
    for i, (q, a, rating) in enumerate([("Q accept?", "yes", "up"), ("Q edit?", "wrong", "down"),
                                        ("Q reject?", "spam", "up")]):
        store.add_feedback("acme", q, a, rating=rating, idempotency_key=str(i))
    store.add_feedback("globex", "Q other tenant?", "hidden", rating="up")
    store.close()
    _raft_file(ws)
    server = Server(ws)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(server.url + "/curate")
            page.fill("#key", key)
            page.click("#login-button")
            expect(page.locator("#progress")).to_contain_text("0 / 3 reviewed")  # globex's row is not listed
            expect(page.locator("#question")).to_have_text("Q accept?")
            page.click("#accept")
            expect(page.locator("#question")).to_have_text("Q edit?")
            page.click("#edit")
            page.fill("#edit-correction", "right")
            page.click("#save")
            expect(page.locator("#question")).to_have_text("Q reject?")
            page.click("#reject")
            expect(page.locator("#progress")).to_contain_text("3 / 3 reviewed · 1 accepted · 1 edited · 1 rejected")
            expect(page.locator("#empty")).to_be_visible()
            page.click("#tab-raft")
            expect(page.locator("#progress")).to_contain_text("0 / 2 reviewed")
            expect(page.locator("#question")).to_have_text("What color is the fox?")
            page.click("#reject")
            page.click("#edit")
            page.fill("#edit-answer", "old oak trees")
            page.click("#save")
            expect(page.locator("#progress")).to_contain_text("2 / 2 reviewed")
            page.select_option("#filter", "all")
            expect(page.locator("#position")).to_contain_text("of 2 loaded")
            browser.close()
    finally:
        server.stop()

    summary = build_from_feedback(ws)
    assert summary.skipped_rejected == 1 and summary.used == 3  # acme: accept, edit; globex: untouched
    from ragtune.synth.store import read_raft

    sft = {e.question: e for e in read_raft(summary.files["sft"])}
    assert "Q reject?" not in sft and sft["Q edit?"].answer == "right" and sft["Q accept?"].answer == "yes"
    curated = read_raft(summary.files["raft_curated"])
    assert [(e.id, e.answer) for e in curated] == [("raft-1", "old oak trees")]
