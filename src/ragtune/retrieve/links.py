"""Title links: which documents of the index a text names by their title.

Multi-hop questions name their first document; the second (bridge) document is usually *named in* the first, the
way a Wikipedia paragraph links the articles it mentions (what multi-hop retrievers such as MDR or GoldEn follow).
The corpus rarely keeps the hyperlinks, but the titles are in the catalog, so a mention of a title is the link.

Matching is on normalised word tokens (lower case, accents stripped, punctuation dropped), whole words only, greedy
longest match: "Ed Wood (film)" is found as "Ed Wood" (the parenthetical disambiguates a title, the text never
writes it), and "New York City" in a text does not also link a document titled "York". Titles shorter than
`MIN_TITLE_CHARS` or that are stop words are never linked: they occur in almost every text and would link noise.
A text of n tokens costs n dictionary look-ups per n-gram length up to the longest title (capped), not one substring
test per title: ~12k titles, a paragraph scans in well under a millisecond.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import pyarrow as pa

MIN_TITLE_CHARS = 4
MAX_TITLE_TOKENS = 10  # longer titles (rare, and then seldom written out in full) are not linked
_STOP = """
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves one two three four five first second new old year years born
"""
STOP_WORDS = frozenset(_STOP.split())
_WORD = re.compile(r"\w+")
_PAREN = re.compile(r"\s*\([^)]*\)\s*$")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens with accents stripped: "Pokémon" and "pokemon" are the same word."""
    folded = unicodedata.normalize("NFKD", text.lower())
    return _WORD.findall("".join(c for c in folded if not unicodedata.combining(c)))


def title_keys(title: str) -> list[tuple[str, ...]]:
    """The token sequences a mention of this title may take: the title itself and, for "X (film)", X alone.
    Keys too short to be a name or that are a stop word are left out."""
    keys = []
    for variant in dict.fromkeys([title, _PAREN.sub("", title)]):
        key = tuple(tokens(variant))
        if not key or len(key) > MAX_TITLE_TOKENS or len(" ".join(key)) < MIN_TITLE_CHARS:
            continue
        if all(t in STOP_WORDS or t.isdigit() for t in key):
            continue
        keys.append(key)
    return keys


@dataclass(frozen=True)
class Link:
    doc_id: str
    title: str
    mention: str  # the normalised words that matched
    position: int  # token offset of the mention in the linking text: first mentions first


class TitleLinks:
    """Normalised title -> documents, built once from a level's catalog (rebuilt by the caller on a new version)."""

    def __init__(self, catalog: pa.Table):
        self.docs: dict[tuple[str, ...], list[str]] = {}
        self.titles: dict[str, str] = {}
        for doc, title in zip(catalog["doc_id"].to_pylist(), catalog["title"].to_pylist(), strict=True):
            if doc in self.titles or not title:
                continue
            self.titles[doc] = title
            for key in title_keys(title):
                self.docs.setdefault(key, []).append(doc)
        self.longest = max((len(k) for k in self.docs), default=0)

    def links(self, text: str, exclude: set[str] | frozenset[str] = frozenset()) -> list[Link]:
        """The documents whose title `text` mentions, in order of first mention, each once; `exclude` (the linking
        document itself) left out. At each word the longest title starting there wins and its words are consumed."""
        words = tokens(text)
        found: dict[str, Link] = {}
        i = 0
        while i < len(words):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                key = tuple(words[i : i + n])
                docs = self.docs.get(key)
                if docs:
                    for doc in docs:
                        if doc not in exclude and doc not in found:
                            found[doc] = Link(doc, self.titles[doc], " ".join(key), i)
                    i += n
                    break
            else:
                i += 1
        return list(found.values())
