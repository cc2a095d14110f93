"""Chunkers: sizes really in the embedder's tokens, spans exact, ids stable, boundaries where they should be."""

from __future__ import annotations

import pytest

from ragtune.corpus.chunkers import TokenizerAdapter, make_chunker, sentence_spans
from ragtune.hashing import text_hash
from ragtune.records import Document

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by Gustave Eiffel's company. "
    "Dr. Koechlin and Mr. Nouguier drew the first plans in 1884. The tower is 330 metres tall. "
    "It was the tallest man-made structure in the world until 1930.\n\n"
    "Photosynthesis converts light energy into chemical energy. Plants, algae and cyanobacteria perform it. "
    "Chlorophyll absorbs mostly blue and red light. Oxygen is released as a by-product of splitting water. "
    "The Calvin cycle fixes carbon dioxide into sugars."
)


def _doc(text: str = TEXT) -> Document:
    return Document(doc_id="d1", text=text, source="mem", content_hash=text_hash(text))


@pytest.fixture(scope="module")
def tok(embedder):
    return TokenizerAdapter(embedder.tokenizer, embedder.max_tokens)


@pytest.mark.parametrize("name", ["tokens", "sentences", "paragraphs", "semantic"])
def test_spans_exact_sizes_in_tokens_and_ids_stable(name, tok, embedder):
    chunker = make_chunker(name, tok, chunk_size=32, overlap=8 if name == "tokens" else 0, embed=embedder.encode)
    doc = _doc()
    chunks = chunker.chunk(doc)
    assert len(chunks) >= 2
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text and c.doc_id == "d1"
    counts = tok.count([c.text for c in chunks])
    assert max(counts) <= 32
    assert [c.chunk_id for c in chunker.chunk(doc)] == [c.chunk_id for c in chunks]
    changed = chunker.chunk(_doc(TEXT.replace("330", "300")))
    assert {c.chunk_id for c in changed} != {c.chunk_id for c in chunks}  # new content, new ids


def test_token_overlap_is_exactly_n_tokens(tok):
    chunker = make_chunker("tokens", tok, chunk_size=20, overlap=5)
    chunks = chunker.chunk(_doc())
    # Windows are counted on the document's own tokenization (a window may start inside a word, where re-tokenizing
    # the chunk alone would differ), so map each chunk back to token indices of the document.
    offsets = [o for o in tok.offsets(TEXT) if o[1] > o[0]]
    starts = {s: i for i, (s, _) in enumerate(offsets)}
    ends = {e: i for i, (_, e) in enumerate(offsets)}
    windows = [(starts[c.start], ends[c.end]) for c in chunks]
    for (a0, a1), (b0, _b1) in zip(windows, windows[1:], strict=False):
        assert a1 - a0 + 1 == 20
        assert a1 - b0 + 1 == 5  # exactly 5 shared tokens
    assert windows[-1][1] == len(offsets) - 1  # the tail is covered


def test_sentence_chunker_never_cuts_a_sentence(tok):
    chunks = make_chunker("sentences", tok, chunk_size=40).chunk(_doc())
    sentences = {TEXT[s:e] for s, e in sentence_spans(TEXT)}
    for c in chunks:
        assert any(c.text.startswith(s) for s in sentences) and any(c.text.endswith(s) for s in sentences)
    assert "Dr. Koechlin and Mr. Nouguier drew the first plans in 1884." in sentences  # abbreviations kept


def test_paragraph_chunker_starts_chunks_at_headings(tok):
    text = "# Intro\n\nShort intro.\n\n## Install\n\nRun pip.\n\n## Use\n\nCall it."
    chunks = make_chunker("paragraphs", tok, chunk_size=200).chunk(_doc(text))
    assert [c.text.splitlines()[0] for c in chunks] == ["# Intro", "## Install", "## Use"]


def test_semantic_chunker_breaks_at_the_topic_change(tok, embedder):
    chunks = make_chunker("semantic", tok, chunk_size=120, embed=embedder.encode).chunk(_doc())
    boundary = TEXT.index("Photosynthesis")
    assert any(c.start == boundary for c in chunks)


def test_bad_sizes_are_refused(tok):
    with pytest.raises(ValueError, match="overlap"):
        make_chunker("tokens", tok, chunk_size=20, overlap=20)
    with pytest.raises(ValueError, match="exceeds the embedder"):
        make_chunker("tokens", tok, chunk_size=1000)
    with pytest.raises(ValueError, match="unknown chunker"):
        make_chunker("words", tok)
