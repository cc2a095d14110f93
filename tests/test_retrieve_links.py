"""Title-link expansion (`transform="link"`): a bridge document that only the first document names is found, short
or stop-word titles link nothing, and links stay inside the tenant. A real LanceDB index of a few JSONL documents
embedded with the bundled MiniLM."""

from __future__ import annotations

import json

import pytest

from ragtune.config import IngestConfig, SearchConfig
from ragtune.index.ingest import ingest
from ragtune.retrieve.links import TitleLinks, title_keys
from ragtune.retrieve.search import Searcher

QUESTION = "When was the teacher of Orvina Falk born?"
TENANT_A = [
    ("falk", "Orvina Falk", "Orvina Falk is a painter of harbour scenes. As a girl she learned to paint from Teodor "
     "Malm in his workshop, and she often mixed her colours with ash from the stove. Later she met Lisa Varn."),
    ("malm", "Teodor Malm (sculptor)", "He came into the world in 1841 in a fishing village and carved granite "
     "statues of saints for the churches of the coast."),
    ("ash", "Ash", "A grey powder left after a fire. It is used in glazes for pottery."),
    ("with", "With", "A preposition of the English language, used to mean accompanied by."),
    ("year", "Teacher of the Year", "Teacher of the Year is an award given every year to a teacher, born of a "
     "wish to honour the teachers of the year."),
    ("born", "Born in the Year of the Painter", "Born in the Year of the Painter is a novel about a painter and "
     "her teacher, who was born in the year of a great storm."),
    ("paint", "Painter (occupation)", "A painter is an artist who paints pictures. Many a painter was taught by a "
     "teacher in a workshop in the year they were born into the trade."),
]
TENANT_B = [("varn", "Lisa Varn", "Lisa Varn is a painter whose teacher was born in the year 1900.")]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("links")
    for tenant, docs in (("a", TENANT_A), ("b", TENANT_B)):
        path = root / f"{tenant}.jsonl"
        path.write_text("\n".join(json.dumps({"id": i, "title": t, "text": x}) for i, t, x in docs), encoding="utf-8")
        ingest([path], root / "ws", IngestConfig(tenant=tenant, sentences=True), embedder=embedder)
    return root / "ws"


def titles(hits) -> list[str]:
    return [h.title for h in hits]


def test_title_keys_skip_short_and_stop_word_titles():
    assert title_keys("Ed Wood (film)") == [("ed", "wood", "film"), ("ed", "wood")]
    assert title_keys("Pokémon") == [("pokemon",)]
    assert title_keys("Ash") == [] and title_keys("With") == [] and title_keys("The One") == []
    assert title_keys("1984") == []  # a bare number is not a name either


def test_links_are_whole_words_longest_first():
    import pyarrow as pa

    catalog = pa.table({"doc_id": ["ny", "york", "ork", "wood"], "title": ["New York City", "York", "Orkney",
                                                                           "Ed Wood (film)"]})
    links = TitleLinks(catalog)
    found = links.links("She moved to New York City, then to York; Ed Wood's films were shown in Yorkshire.")
    assert [(link.doc_id, link.mention) for link in found] == [("ny", "new york city"), ("york", "york"),
                                                              ("wood", "ed wood")]
    assert links.links("New York City", exclude={"ny"}) == []


def test_link_finds_the_document_only_the_first_one_names(ws, embedder):
    plain = Searcher(ws, embedder=embedder).search(QUESTION, k=3, filters={"tenant": "a"})
    assert titles(plain)[0] == "Orvina Falk" and "Teodor Malm (sculptor)" not in titles(plain)
    searcher = Searcher(ws, SearchConfig(transform="link", link_hits=1), embedder=embedder)
    hits = searcher.search(QUESTION, k=3, filters={"tenant": "a"})
    assert titles(hits)[:2] == ["Orvina Falk", "Teodor Malm (sculptor)"]  # the default merge: right after its hit
    links = searcher.pipeline.last_trace["links"]
    assert links[0]["hit_title"] == "Orvina Falk"
    linked = {entry["title"]: entry["mention"] for entry in links[0]["linked"]}
    assert linked["Teodor Malm (sculptor)"] == "teodor malm"
    assert not {"Ash", "With", "Lisa Varn"} & set(linked)  # too short, a stop word, another tenant


def test_links_stay_inside_the_filters(ws, embedder):
    searcher = Searcher(ws, SearchConfig(transform="link", link_hits=1, link_docs=5), embedder=embedder)
    unfiltered = searcher.search(QUESTION, k=8)
    assert "Lisa Varn" in {e["title"] for e in searcher.pipeline.last_trace["links"][0]["linked"]}
    assert "Lisa Varn" in titles(unfiltered)
    hits = searcher.search(QUESTION, k=8, filters={"tenant": "a"})
    assert "Lisa Varn" not in titles(hits)
    assert all(e["title"] != "Lisa Varn" for hop in searcher.pipeline.last_trace["links"] for e in hop["linked"])


@pytest.mark.parametrize("options", [{"transform": "hop+link"}, {"transform": "link", "parent": "chunk"},
                                     {"transform": "link", "link_merge": "rrf"}])
def test_link_combines_with_hop_the_sentence_level_and_the_rrf_merge(ws, embedder, options):
    searcher = Searcher(ws, SearchConfig(link_hits=1, **options), embedder=embedder)
    hits = searcher.search(QUESTION, k=3, filters={"tenant": "a"})
    assert "Teodor Malm (sculptor)" in titles(hits)
    assert len({h.chunk_id for h in hits}) == len(hits)


def test_search_cli_link_explains_the_links(ws):
    from typer.testing import CliRunner

    from ragtune.cli import app

    runner = CliRunner()
    assert "hop+link" in runner.invoke(app, ["search", "--help"]).output
    result = runner.invoke(app, ["search", QUESTION, "-w", str(ws), "--transform", "link", "-k", "3", "--explain",
                                 "--filter", "tenant=a"])
    assert result.exit_code == 0, result.output
    assert "Teodor Malm (sculptor)" in result.output and '"links"' in result.output
