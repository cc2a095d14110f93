"""Grounding that does not rely on the teacher copying text: ragtune finds the evidence in the oracle chunk itself.

A small teacher (the bundled 135M model) writes usable questions and short answers but rarely copies a sentence
exactly between quote markers. So the teacher only proposes (question, answer); this module aligns the answer, then the
question, against the chunk's sentences (exact, then normalised, then fuzzy above a threshold) and writes the quoted
chain of thought from the sentences it located. Every quote is a span of the chunk's own text, so it is verbatim by
construction. A teacher whose own quotes are verbatim keeps them (see `raft.py`).

Fuzzy matching uses rapidfuzz when it is installed and difflib otherwise; both give a 0-100 partial-ratio score.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Literal

from ragtune.synth.validate import normalize_ws

Method = Literal["exact", "normalised", "fuzzy"]
_TIERS: dict[str, int] = {"exact": 0, "normalised": 1, "fuzzy": 2}

# a boundary is . ! ? (optionally closed by a quote or bracket) followed by space and an upper-case letter / digit /
# quote; the abbreviations below and single initials ("J. R. R. Tolkien") do not end a sentence
_BOUNDARY = re.compile(r"(?P<end>[.!?][\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])|(?P<para>\n\s*\n)")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "lt", "gen", "col", "capt", "sgt", "rev", "co", "corp",
    "inc", "ltd", "no", "vs", "etc", "fig", "vol", "mt", "ft", "u.s", "u.k", "e.g", "i.e", "approx", "dept", "jan",
    "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "gov", "adm", "maj", "pres", "rep",
}
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS_TEXT = (
    "a an the of in on at to for from by with and or but is are was were be been being this that these those it its "
    "as into about over after before during which who whom whose what when where why how did do does has have had "
    "can could would should will shall may might must not no yes than then there their they them he she his her him "
    "i you we our your also name named called"
)
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


@dataclass(frozen=True)
class Sentence:
    """A sentence of a chunk as character offsets: `text == chunk[start:end]`, so quoting it is copying it."""

    text: str
    start: int
    end: int


def split_sentences(text: str, min_words: int = 4) -> list[Sentence]:
    """The chunk's sentences as spans of its own text. Fragments shorter than `min_words` (an abbreviation the
    splitter missed, a heading) join the sentence before them, so no span is a stray "Co." or "Lt."."""
    cuts: list[int] = []
    for m in _BOUNDARY.finditer(text):
        if m.group("para"):
            cuts.append(m.start())
            continue
        if m.group("end").startswith("."):
            last = re.search(r"([\w.]+)\.$", text[: m.start() + 1])
            token = last.group(1).lower() if last else ""
            if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
                continue
        cuts.append(m.end("end"))
    spans: list[tuple[int, int]] = []
    begin = 0
    for cut in [*cuts, len(text)]:
        if cut > begin:
            spans.append((begin, cut))
        begin = cut
    sentences: list[Sentence] = []
    for s, e in spans:
        chunk = text[s:e]
        lead = len(chunk) - len(chunk.lstrip())
        s, e = s + lead, s + len(chunk.rstrip())
        if e <= s:
            continue
        if sentences and len(text[s:e].split()) < min_words:
            prev = sentences[-1]
            sentences[-1] = Sentence(text[prev.start : e], prev.start, e)
        else:
            sentences.append(Sentence(text[s:e], s, e))
    if len(sentences) > 1 and len(sentences[0].text.split()) < min_words:  # a short opening fragment joins the next
        first, second = sentences[0], sentences[1]
        sentences[:2] = [Sentence(text[first.start : second.end], first.start, second.end)]
    return sentences


def normalise(text: str) -> str:
    """Lower case, accents and punctuation removed, whitespace collapsed: 'Menotti's "Hero"' -> 'menotti s hero'."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(_WORD.findall(plain.lower()))


def content_words(text: str) -> set[str]:
    return {w for w in normalise(text).split() if w not in STOPWORDS}


def _difflib_partial(short: str, long: str) -> float:
    """fuzzywuzzy's partial ratio with difflib: the best ratio of `short` against any window of `long`."""
    if not short or not long:
        return 0.0
    if len(short) > len(long):
        short, long = long, short
    best = 0.0
    matcher = SequenceMatcher(None, short, long, autojunk=False)
    for a, b, _size in matcher.get_matching_blocks():
        start = max(0, b - a)
        window = long[start : start + len(short)]
        best = max(best, SequenceMatcher(None, short, window, autojunk=False).ratio())
        if best == 1.0:
            break
    return 100.0 * best


def partial_ratio(short: str, long: str) -> float:
    """0-100: how well `short` matches its best-aligned window of `long` (rapidfuzz if installed, else difflib)."""
    try:
        from rapidfuzz import fuzz
    except ImportError:
        return _difflib_partial(short, long)
    return float(fuzz.partial_ratio(short, long))


def fuzzy_backend() -> str:
    try:
        import rapidfuzz  # noqa: F401
    except ImportError:
        return "difflib"
    return "rapidfuzz"


@dataclass
class Located:
    """Where an answer was found: the sentence, by which tier, with what score (100 for exact / normalised)."""

    sentence: Sentence
    method: Method
    score: float


def locate(answer: str, sentences: Sequence[Sentence], threshold: float = 85.0) -> list[Located]:
    """Every sentence that contains the answer, best tier first: exact text, then normalised text, then a fuzzy
    partial match of the normalised texts scoring at least `threshold`."""
    answer = normalize_ws(answer).strip(" .,;:\"'")
    if not answer:
        return []
    norm = normalise(answer)
    found: list[Located] = []
    for s in sentences:
        text = normalize_ws(s.text)
        if answer in text:
            found.append(Located(s, "exact", 100.0))
        elif norm and f" {norm} " in f" {normalise(text)} ":
            found.append(Located(s, "normalised", 100.0))
        elif norm and len(norm) >= 4:
            score = partial_ratio(norm, normalise(text))
            if score >= threshold and _words_match(norm, normalise(text)):
                found.append(Located(s, "fuzzy", score))
    return sorted(found, key=lambda x: (_TIERS[x.method], -x.score))


def _words_match(answer: str, sentence: str, ratio: float = 0.8) -> bool:
    """Every content word of the (normalised) answer is in the sentence, or a near spelling of one of its words:
    a character-level partial match alone accepts "Mladic on April 19, 2014" for "... on April 19, 2014"."""
    words = set(sentence.split())
    for w in answer.split():
        if w in STOPWORDS or w in words:
            continue
        if not any(SequenceMatcher(None, w, x, autojunk=False).ratio() >= ratio for x in words):
            return False
    return True


def question_overlap(question: str, sentence: str) -> float:
    """Share of the question's content words that the sentence contains (0..1)."""
    q = content_words(question)
    return len(q & content_words(sentence)) / len(q) if q else 0.0


def shorten_answer(answer: str, question: str, max_words: int) -> str:
    """A short answer from a long one (small teachers often answer with the whole sentence): the longest run of
    the answer's words that the question does not already contain, without leading / trailing stop words. The
    result is a span of the answer's own text; an answer already short is returned as is."""
    words = normalize_ws(answer).rstrip(".").split()
    if len(words) <= max_words:
        return normalize_ws(answer).rstrip(".") if len(words) > 1 else normalize_ws(answer)
    asked = content_words(question)
    best: tuple[int, int] = (0, 0)
    start = 0
    for i, w in enumerate([*words, ""]):
        if i == len(words) or (normalise(w) in asked and normalise(w) not in STOPWORDS):
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = i + 1
    run = words[best[0] : best[1]]
    while run and normalise(run[0]) in STOPWORDS | {""}:
        run = run[1:]
    while run and normalise(run[-1]) in STOPWORDS | {""}:
        run = run[:-1]
    return " ".join(run).strip(" ,;:") if run else normalize_ws(answer)


@dataclass
class Grounding:
    """The outcome of grounding one (question, answer) in its chunk. `quotes` are verbatim spans of the chunk;
    `reason` says why grounding failed (empty when it worked)."""

    answer: str
    quotes: list[str] = field(default_factory=list)
    method: str = ""
    score: float = 0.0
    shortened: bool = False
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason and bool(self.quotes)


def ground(
    question: str,
    answer: str,
    chunk_text: str,
    threshold: float = 85.0,
    max_quotes: int = 2,
    max_answer_words: int = 8,
    second_quote_overlap: float = 0.5,
) -> Grounding:
    """Locate the evidence for `answer` to `question` in `chunk_text` and return the verbatim sentences to quote.

    The first quote is the sentence holding the answer (best tier, then the most question words); a second one is
    added when another sentence holds at least `second_quote_overlap` of the question's content words that the first
    lacks (a fact split over two sentences). An answer longer than `max_answer_words` is shortened to the part the
    question does not already say.
    """
    sentences = split_sentences(chunk_text)
    found = locate(answer, sentences, threshold)
    if not found:
        return Grounding(answer=normalize_ws(answer), reason="answer not in chunk")
    best_tier = _TIERS[found[0].method]
    tier = [x for x in found if _TIERS[x.method] == best_tier]
    first = max(tier, key=lambda x: (question_overlap(question, x.sentence.text), x.score, -x.sentence.start))
    chosen = [first.sentence]
    missing = content_words(question) - content_words(first.sentence.text)
    if max_quotes > 1 and missing:
        def gain(s: Sentence) -> float:
            return len(missing & content_words(s.text)) / len(missing)

        others = [s for s in sentences if s != first.sentence]
        if others:
            extra = max(others, key=lambda s: (gain(s), -s.start))
            if gain(extra) >= second_quote_overlap:
                chosen.append(extra)
    chosen.sort(key=lambda s: s.start)
    short = shorten_answer(answer, question, max_answer_words)
    quotes = [normalize_ws(s.text) for s in chosen]
    return Grounding(
        answer=short,
        quotes=quotes,
        method=first.method,
        score=first.score,
        shortened=normalize_ws(short) != normalize_ws(answer).rstrip("."),
    )


def verbatim(quotes: Sequence[str], chunk_text: str) -> bool:
    """Whether every quote occurs in the chunk (whitespace-normalised), the invariant of every RAFT example."""
    text = normalize_ws(chunk_text)
    return all(q and q in text for q in quotes)
