"""Loaders on real files and on every kind of bad input."""

from __future__ import annotations

import gzip
import json

from conftest import HOTPOT_MINI, RAFT_SAMPLE_DOCS, SHARED_DATA, needs_shared

from ragtune.corpus.loaders import LoadOptions, LoadReport, load_paths


def _load(paths, **options):
    report = LoadReport()
    docs = list(load_paths(paths, LoadOptions(**options), report))
    return docs, report


@needs_shared
def test_raft_sample_docs_txt_pdf_json():
    docs, report = _load([RAFT_SAMPLE_DOCS / f for f in ("blog.txt", "UC_Berkeley_short.pdf", "apizoo.json")])
    assert report.skipped == [] and report.files_loaded == 3
    by_format: dict[str, list] = {}
    for d in docs:
        by_format.setdefault(d.metadata["format"], []).append(d)
    # blog.txt is an HTML page saved as .txt: read as HTML, so no markup survives.
    (blog,) = by_format["html"]
    assert "RAFT" in blog.text and "<script" not in blog.text and "gtag(" not in blog.text
    (pdf,) = by_format["pdf"]
    assert "Berkeley" in pdf.text and pdf.metadata["pages"] >= 1
    apis = by_format["record"]
    assert len(apis) == 79  # one document per API record
    assert all(d.title for d in apis) and len({d.doc_id for d in apis}) == 79
    assert any(d.metadata.get("api_version") == "1.0" for d in apis)
    for d in docs:
        assert d.content_hash and d.modified and d.source.startswith("/")


@needs_shared
def test_qa_datasets_as_corpora():
    squad, _ = _load([SHARED_DATA / "squad_v2" / "official_dev-v2.0_first_article.json"])
    raw = json.loads((SHARED_DATA / "squad_v2" / "official_dev-v2.0_first_article.json").read_text())
    contexts = {p["context"] for a in raw["data"] for p in a["paragraphs"]}
    assert len(squad) == len(contexts) and {d.metadata["format"] for d in squad} == {"squad"}
    nq, _ = _load([SHARED_DATA / "nq_open_oracle" / "nq-open-oracle.jsonl.gz"])
    assert nq and all(d.metadata["format"] == "nq" for d in nq)
    assert len(nq) == len({(d.title, d.text) for d in nq})


def test_hotpotqa_one_document_per_distinct_paragraph():
    docs, report = _load([HOTPOT_MINI])
    data = json.loads(HOTPOT_MINI.read_text())
    distinct = {(t, "".join(s).strip()) for q in data for t, s in q["context"]}
    assert len(docs) == len(distinct) and report.skipped == []
    titles = {d.title for d in docs}
    assert all(t in titles for q in data for t, _ in q["supporting_facts"])
    again, _ = _load([HOTPOT_MINI])
    assert [d.doc_id for d in again] == [d.doc_id for d in docs]  # stable ids


def test_markdown_html_and_json_fields(tmp_path):
    (tmp_path / "a.md").write_text("# Guide\n\nSome text.\n\n## Part\n\nMore.", encoding="utf-8")
    (tmp_path / "b.html").write_text(
        "<html><head><title>T</title><style>p{}</style></head><body><nav>menu</nav><p>Hello <b>there</b></p>"
        "<script>var x=1;</script></body></html>", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"uid": "x1", "body": "alpha text", "team": "red", "heading": "H"}) + "\n", encoding="utf-8")
    docs, report = _load([tmp_path], text_field=None)
    by_source = {d.source.rsplit("/", 1)[1]: d for d in docs}
    assert by_source["a.md"].title == "Guide"
    assert by_source["b.html"].text == "Hello\nthere" or "Hello" in by_source["b.html"].text
    assert "var x" not in by_source["b.html"].text and "menu" not in by_source["b.html"].text
    assert by_source["b.html"].title == "T"
    docs, _ = _load([tmp_path / "c.jsonl"], text_field="body", id_field="uid", title_field="heading",
                    metadata_fields=["team"])
    assert docs[0].text == "alpha text" and docs[0].title == "H" and docs[0].metadata["team"] == "red"
    assert docs[0].metadata["record_id"] == "x1"


def test_bad_inputs_warn_once_each_and_the_rest_loads(tmp_path):
    (tmp_path / "good.txt").write_text("A perfectly fine document.", encoding="utf-8")
    (tmp_path / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage without xref")
    (tmp_path / "binary.dat").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("café résumé ok".encode("latin-1"))
    (tmp_path / "rows.jsonl").write_text('{"text": "row one"}\n{not json\n{"text": "row three"}\n', encoding="utf-8")
    with gzip.open(tmp_path / "rows2.jsonl.gz", "wt") as f:
        f.write('{"text": "zipped"}\n')
    docs, report = _load([tmp_path])
    texts = {d.text for d in docs}
    assert {"A perfectly fine document.", "row one", "row three", "zipped"} <= texts
    skipped = {path.rsplit("/", 1)[1]: why for path, why in report.skipped}
    assert set(skipped) == {"corrupt.pdf", "binary.dat", "empty.txt"}
    assert "PDF" in skipped["corrupt.pdf"] and "binary" in skipped["binary.dat"] and "empty" in skipped["empty.txt"]
    joined = "\n".join(report.warnings)
    assert "rows.jsonl:2" in joined  # file and line
    assert "latin1.txt" in joined and "UTF-8" in joined
    assert any("caf" in t for t in texts)  # invalid UTF-8 is warned about, not dropped
    for name in ("corrupt.pdf", "binary.dat", "empty.txt"):
        assert sum(name in w for w in report.warnings) == 1  # one warning per bad file
