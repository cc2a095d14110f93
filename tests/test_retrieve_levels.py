"""Small-to-big (sentence window, parent chunk / document), the summary level and routing, on a real LanceDB index
built with the bundled embedder from a handful of documents whose sentences are known."""

from __future__ import annotations

import json

import pytest

from ragtune.config import IngestConfig, SearchConfig
from ragtune.index.ingest import ingest
from ragtune.index.levels import SENTENCES, build_level, lead_summary, sentence_rows
from ragtune.retrieve.routing import route, route_by_rules
from ragtune.retrieve.search import Searcher

VOLCANO = [
    "Mount Arvel is a dormant volcano in the north of the island.",
    "Its last eruption happened in the year 1821.",
    "The eruption of 1821 buried the village of Tesk under grey ash.",
    "Today the slopes are covered with vineyards.",
    "A small museum in the harbour town shows photographs of the crater.",
]
RIVER = [
    "The Olm river rises in the eastern hills.",
    "It flows for ninety kilometres before it reaches the sea.",
    "Salmon swim up the Olm every autumn.",
    "Fishermen on the Olm use nets woven from willow.",
]
BRIDGE = ["The Kessel bridge crosses the Olm at its mouth.", "It was opened by the queen in 1902."]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("levels")
    docs = root / "docs"
    docs.mkdir()
    for name, sentences in (("arvel", VOLCANO), ("olm", RIVER), ("kessel", BRIDGE)):
        (docs / f"{name}.txt").write_text(" ".join(sentences), encoding="utf-8")
    # chunks of about two sentences, so a document has several parent chunks and windows cross chunk borders
    config = IngestConfig(chunk_size=28, sentences=True, summaries=True)
    summary = ingest([docs], root / "ws", config, embedder=embedder)
    assert summary.levels == {"sentences": len(VOLCANO) + len(RIVER) + len(BRIDGE), "summaries": 3}
    return root


def test_window_returns_the_neighbouring_sentences(ws, embedder):
    searcher = Searcher(ws / "ws", SearchConfig(window=1), embedder=embedder)
    hit = searcher.search("When did the village of Tesk get buried under ash?", k=1)[0]
    assert hit.metadata["matched_sentence"] == VOLCANO[2]
    assert hit.text == " ".join(VOLCANO[1:4])  # one sentence either side, across the chunk border
    wider = Searcher(ws / "ws", SearchConfig(window=2), embedder=embedder).search("Tesk buried under ash", k=1)[0]
    assert wider.text == " ".join(VOLCANO[0:5])


def test_windows_do_not_repeat_a_sentence_already_shown(ws, embedder):
    hits = Searcher(ws / "ws", SearchConfig(window=1), embedder=embedder).search("Olm river salmon fishermen", k=6)
    matched = [h.metadata["matched_sentence"] for h in hits]
    shown = [h.text for h in hits]
    for i, sentence in enumerate(matched):
        assert not any(sentence in earlier for earlier in shown[:i]), (sentence, shown[:i])


def test_parents_are_deduplicated(ws, embedder):
    searcher = Searcher(ws / "ws", SearchConfig(parent="chunk"), embedder=embedder)
    hits = searcher.search("the Olm river", k=5)
    ids = [h.chunk_id for h in hits]
    assert len(ids) == len(set(ids)) and "#s" not in "".join(ids)
    chunk_texts = {h.chunk_id: h.text for h in Searcher(ws / "ws", embedder=embedder).search("Olm", k=20)}
    assert all(chunk_texts.get(h.chunk_id) == h.text for h in hits)  # the parent chunk itself, verbatim
    docs = Searcher(ws / "ws", SearchConfig(parent="document"), embedder=embedder).search("the Olm river", k=3)
    assert len({h.doc_id for h in docs}) == len(docs) == 3
    olm = next(h for h in docs if h.title == "olm")
    assert olm.text == " ".join(RIVER) and olm.metadata["parent"] == "document"


def test_levels_follow_document_changes(ws, embedder):
    (ws / "docs" / "kessel.txt").write_text("The Kessel bridge was rebuilt in steel in 1950.", encoding="utf-8")
    ingest([ws / "docs"], ws / "ws", IngestConfig(chunk_size=28), embedder=embedder)  # chunks only
    again = build_level(ws / "ws", SENTENCES, embedder=embedder)
    assert (again.removed, again.rows_added) == (1, 1)  # only the changed document is redone
    hit = Searcher(ws / "ws", SearchConfig(window=1), embedder=embedder).search("bridge rebuilt in steel", k=1)[0]
    assert hit.text == "The Kessel bridge was rebuilt in steel in 1950."


def test_sentence_rows_and_lead_summary_keep_document_order():
    from ragtune.records import Chunk

    text = " ".join(VOLCANO)
    cut = text.index(VOLCANO[2])
    chunks = [Chunk(chunk_id="a", doc_id="d", text=text[: cut - 1], start=0, end=cut - 1, source="s"),
              Chunk(chunk_id="b", doc_id="d", text=text[cut:], start=cut, end=len(text), source="s")]
    rows = sentence_rows(chunks)
    assert [r.text for r in rows] == VOLCANO
    assert [r.metadata["ordinal"] for r in rows] == list(range(5))
    assert [r.metadata["parent_chunk"] for r in rows] == ["a", "a", "b", "b", "b"]
    assert all(text[r.start : r.end] == r.text for r in rows)
    assert lead_summary(chunks, words=20) == " ".join(VOLCANO[:2])


def test_routing_explains_its_choice(ws, embedder):
    overview = route_by_rules("Give me an overview of the Olm river")
    assert overview.level == "summaries" and "'overview'" in overview.reason
    assert route_by_rules("Compare the Olm river and Mount Arvel").level == "summaries"
    fact = route_by_rules("When did Mount Arvel last erupt?")
    assert fact.level == "chunks" and "fact" in fact.reason
    assert route("Summarise the Olm", "auto", summaries_available=False).level == "chunks"

    searcher = Searcher(ws / "ws", SearchConfig(route="auto"), embedder=embedder)
    hits = searcher.search("Summarise what is known about the Olm river", k=2)
    assert hits[0].chunk_id.endswith("#summary") and hits[0].metadata["level"] == "summaries"
    assert "summarise" in hits[0].metadata["route"]
    assert hits[0].text == " ".join(RIVER)  # lead sentences up to about 60 words: all of this short document
    facts = searcher.search("When did Mount Arvel last erupt?", k=2)
    assert facts[0].metadata["level"] == "chunks" and not facts[0].chunk_id.endswith("#summary")
    assert searcher.pipeline.last_trace["route"] == facts[0].metadata["route"]


def test_search_cli_small_to_big_and_explain(ws):
    from typer.testing import CliRunner

    from ragtune.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["search", "Tesk buried under ash", "-w", str(ws / "ws"), "--window", "1", "-k",
                                 "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["text"] == " ".join(VOLCANO[1:4])
    result = runner.invoke(app, ["search", "overview of the Olm", "-w", str(ws / "ws"), "--route", "auto",
                                 "--explain", "--parent", "--json"])
    assert result.exit_code == 0, result.output
    assert "'overview'" in result.output
    missing = runner.invoke(app, ["search", "x", "-w", str(ws / "nothing"), "--window", "1"])
    assert missing.exit_code != 0


def test_eval_retrieved_setting_takes_the_search_options(ws):
    from ragtune.eval.runner import SystemSpec, default_run_name, open_searcher
    from ragtune.retrieve.options import search_overrides
    from ragtune.workspace import Workspace

    search = search_overrides(window=1, rerank=None, transform="none")
    assert search == {"window": 1}
    searcher = open_searcher(Workspace(ws / "ws"), search=search)
    assert searcher.search("Tesk buried under ash", k=1)[0].text == " ".join(VOLCANO[1:4])

    plain = SystemSpec(setting="retrieved").settings(8)
    windowed = SystemSpec(setting="retrieved", search=search).settings(8)
    assert "search" not in plain.identity()  # runs made before search options keep their resume signature
    assert windowed.identity()["search"] == {"window": 1}
    names = {default_run_name("m", None, "hotpotqa", s, [0], "eval", None) for s in (plain, windowed)}
    assert len(names) == 2  # another retrieval configuration never reuses the answers of the plain one
    assert SystemSpec.from_dict({"setting": "retrieved", "search": {"transform": "hyde"}}).search == {
        "transform": "hyde"}


def test_hop_searches_again_with_the_top_hits_text(ws, embedder):
    searcher = Searcher(ws / "ws", SearchConfig(transform="hop"), embedder=embedder)
    hits = searcher.search("Kessel bridge", k=3)
    top = Searcher(ws / "ws", embedder=embedder).search("Kessel bridge", k=1)[0]
    hop = searcher.pipeline.last_trace["variants"][1]
    assert hop["origin"] == "hop" and hop["lexical"] == f"Kessel bridge {top.text}"
    assert len({h.chunk_id for h in hits}) == 3  # two rankings fused, each chunk once
    parents = Searcher(ws / "ws", SearchConfig(transform="hop", parent="chunk"), embedder=embedder)
    best = parents.search("Kessel bridge", k=2)[0]
    # on the sentence level the feedback is the top sentence's parent chunk, not the lone sentence
    assert parents.pipeline.last_trace["variants"][1]["lexical"] == f"Kessel bridge {best.text}"


def _level_vectors(root, level):
    import numpy as np

    from ragtune.index.store import ChunkStore

    table = ChunkStore(root, level).scan(["chunk_id", "title", "text", "vector"])
    return table, np.asarray(table["vector"].to_pylist(), dtype=np.float32)


def test_reembedding_the_index_reembeds_its_levels(tmp_path, embedder):
    """After retriever training re-embeds the chunks, sentence and summary vectors must come from the same model as
    the queries that search them. The level vectors are first overwritten with noise (what another model's vectors
    look like to this one); re-embedding must replace them with this embedder's, and resume inside a level."""
    import numpy as np
    import pyarrow as pa

    from ragtune.index.reembed import reembed_index, state_path
    from ragtune.index.settings import IndexSettings, index_text
    from ragtune.index.store import ChunkStore
    from ragtune.workspace import Workspace

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, sentences in (("arvel", VOLCANO), ("olm", RIVER)):
        (docs / f"{name}.txt").write_text(" ".join(sentences), encoding="utf-8")
    root = tmp_path / "ws"
    ingest([docs], root, IngestConfig(chunk_size=28, sentences=True, summaries=True), embedder=embedder)
    settings = IndexSettings.load(Workspace(root))
    rng = np.random.default_rng(0)
    for level in ("sentences", "summaries"):
        store = ChunkStore(root, level)
        table = store.scan([n for n in store.table.schema.names])
        noise = rng.standard_normal((table.num_rows, settings.dim)).astype(np.float32)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(noise.reshape(-1)), settings.dim)
        table = table.set_column(table.schema.get_field_index("vector"), "vector",
                                 vectors.cast(table.schema.field("vector").type))
        store.table.merge_insert("chunk_id").when_matched_update_all().execute(table)

    # a run interrupted inside the sentence level: the chunk table is done, so only levels are redone
    sentences, _ = _level_vectors(root, "sentences")
    first = sorted(sentences["chunk_id"].to_pylist())[0]
    reference = embedder.resolved.path if embedder.resolved.source == "local" else embedder.resolved.reference
    state_path(Workspace(root)).write_text(json.dumps({"embedder": reference, "table": "sentences",
                                                       "done_through": first}))
    assert reembed_index(root, embedder, commit_every=4) == 0  # no chunk re-embedded
    assert not state_path(Workspace(root)).exists()
    for level in ("sentences", "summaries"):
        table, got = _level_vectors(root, level)
        texts = [index_text(t, x, settings.embed_title)
                 for t, x in zip(table["title"].to_pylist(), table["text"].to_pylist(), strict=True)]
        want = np.asarray(embedder.encode(texts), dtype=np.float32)
        ids = table["chunk_id"].to_pylist()
        redone = [i for i, cid in enumerate(ids) if level == "summaries" or cid > first]
        assert redone and np.allclose(got[redone], want[redone], atol=1e-4), level
    hit = Searcher(root, SearchConfig(window=0), embedder=embedder).search("salmon in autumn", k=1, mode="dense")[0]
    assert "Salmon" in hit.text
