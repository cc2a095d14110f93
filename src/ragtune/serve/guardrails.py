"""Guardrails of the RAG server: request limits, prompt-injection screening of retrieved text, PII redaction.

Retrieved chunks are data, not instructions. A chunk that reads like an instruction to the model ("ignore the previous
instructions", "you are now ...", a forged chat-template turn) is flagged; under the default policy it is left out of
the prompt altogether, so it cannot steer the answer, and the response lists it under `ragtune.flagged` so the
operator can fix the source. Chat-template control tokens are stripped from every chunk whatever the policy, since
they would otherwise open a fake system or assistant turn inside the user message.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

InjectionPolicy = Literal["drop", "flag"]


class Limits(BaseModel):
    """Bounds on one request. Everything past them is refused with 400/413 before any model work, and the deadline
    bounds the model time one request can take, so no request can hold the shared model for the others. Fixed
    wire-format bounds (id and text lengths, seed range, paging) live in `serve.schemas`."""

    max_body_bytes: int = 1_000_000
    max_messages: int = 64
    max_content_parts: int = 32  # text parts of one message's content list
    max_query_chars: int = 4_000
    max_prompt_chars: int = 32_000  # all message contents together
    max_tokens: int = 1024
    max_stop: int = 4  # OpenAI's own bound; each list costs a vocabulary scan (0.1 s per stop on a CPU core)
    max_stop_chars: int = 100  # one stop string
    max_logit_bias: int = 300  # entries (accepted and ignored, OpenAI's bound)
    max_k: int = 50
    max_filters: int = 16
    generation_timeout_s: float = 300.0  # per request, queueing included; past it the request gets a 503
    stall_margin_s: float = 30.0  # /health reports degraded when a batch runs longer than the timeout plus this


# -- prompt-injection screening ----------------------------------------------------------------------------------------
# Screening runs on normalised views of a chunk, so the cheap evasions do not work: NFKC folds fullwidth and other
# compatibility forms, format characters (Unicode category Cf: zero-width spaces and joiners, soft hyphens, BOMs,
# bidi controls) are removed, Cyrillic and Greek look-alikes become the Latin letters they imitate, whitespace
# (line breaks included) collapses to one space, text is casefolded, common digit swaps (1gn0r3) are undone and
# spelled-out words (d-i-s-r-e-g-a-r-d) are joined. The phrases matched address the model rather than inform the
# reader, and are kept narrow since a false positive drops a useful chunk: an override verb may be followed only by
# filler words before the noun ("ignore all the previous instructions", not "ignore the previous step") and not be
# negated ("don't forget the instructions" is advice), a role line must go on to talk to the model.
# Measured on tests/data/injection_cases.jsonl by `injection_benchmark` (see benchmarks/injection.py).

_CONFUSABLES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "г": "r", "і": "i", "ї": "i", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "ь": "b", "һ": "h", "ӏ": "l",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ς": "s",
    # Latin variants NFKC leaves alone
    "ı": "i", "ȷ": "j", "ɡ": "g", "ℓ": "l", "ø": "o",
})
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_CHARS = frozenset("013457@$")
_LEET_TOKEN = re.compile(r"[\w@$]+")
_LEET_MIXED = re.compile(r"[a-z][013457@$]|[013457@$][a-z]")
_SPELLED = re.compile(r"(?<![\w])(?:\w[-._* ]){3,}\w(?![\w])")  # d-i-s-r-e-g-a-r-d, i g n o r e
_SPACES = re.compile(r"\s+")
# default-ignorable code points outside Cf (combining grapheme joiner, variation selectors, Hangul fillers, ...)


def _category_class(category: str) -> str:
    """A regex character class of every code point in a Unicode category, as ranges (a class of single characters
    is 3x slower to scan)."""
    ranges: list[tuple[int, int]] = []
    for c in range(0x110000):
        if unicodedata.category(chr(c)) == category:
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1] = (ranges[-1][0], c)
            else:
                ranges.append((c, c))
    return "[" + "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                         for a, b in ranges) + "]"


_FORMAT = re.compile(_category_class("Cf"))
_IGNORABLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0"
                        "\U000e0100-\U000e01ef]")
_HORIZONTAL = re.compile(r"[^\S\n]+")
_CONTROL_TOKENS = re.compile(r"<\|[a-z_]{2,30}\|>|\[/?INST\]|<</?SYS>>", re.I)

_NOT = r"(?<!\bnot\s)(?<!n't\s)(?<!\bnever\s)(?<!\bdont\s)"  # "don't ignore the safety instructions" is advice
# words allowed between an override verb and what it overrides ("ignore [all of the previous] instructions")
_FILLER = (r"(?:all|any|of|the|your|these|those|this|that|every|everything|previous|previously|prior|above|"
           r"earlier|preceding|foregoing|initial|original|existing|current|other|given|such|default|standard|"
           r"hidden|built-in|baked-in|system|developer'?s?|operator'?s?|admin'?s?|safety|content|security|ethical|"
           r"moral|and|or|kind|kinds|type|types|set|list|above-mentioned|aforementioned|stated|provided|received)")
_TARGET = (r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance|context|commands|orders|"
           r"constraints|restrictions|programming|policies|policy|training|messages?|text|conversation)")
# what marks the instructions as the model's own or earlier ones ("never follow instructions from strangers" is not)
_PRIOR = (r"(?:your|previous|prior|above|earlier|original|initial|system|developer'?s?|operator'?s?|preceding|"
          r"safety|foregoing|existing)")
_OVERRIDE_VERB = (rf"{_NOT}(?:ignore|disregard|forget|override|overrule|overlook|bypass|discard|abandon|neglect|"
                  rf"set aside|put aside|throw out|pay no (?:attention|heed|mind) to|erase|wipe|revoke)")
_AI = (r"(?:ai|a\.i\.|assistant|model|bot|chatbot|llm|language model|dan|jailbroken|unfiltered|unrestricted|"
       r"uncensored|unlimited|evil|free (?:from|of)|no longer (?:bound|restricted|an ai)|not bound|without (?:any )?"
       r"(?:restrictions|rules|limits|filters|guidelines|censorship)|called|named|in (?:developer|dan|god) mode)")
# what an exfiltration instruction sends: the user's or the conversation's data, not "your photos" in a manual
_SECRET = (r"(?<!your\s)(?:(?:the\s+)?user'?s?'?\s+(?:\w+\s+)?(?:data|messages?|questions?|quer(?:y|ies)|"
           r"conversation|chat|history|e-?mail|address|password|credentials|contacts|files|personal|information|"
           r"name|phone|location|input|prompts?|secrets?|tokens?|keys?|session|cookies?)|(?:the|this|our|entire|whole|full)\s+(?:conversation|"
           r"chat)|(?:chat|conversation|message)\s+(?:history|log|transcript)|system\s+prompt|passwords?|"
           r"api[ _-]?keys?|secrets?|access\s+tokens?|credentials|cookies?|personal\s+(?:data|information)|"
           r"session\s+(?:id|token)|everything\s+above|the\s+(?:above|previous)\s+(?:text|messages?|answer))")
# words that show a forged role line or a "new instructions:" header talking to the model, not a spec sheet
_MODEL_CUE = (r"\b(?:you\s+are|you're|you\s+will\s+now|you\s+must\s+(?:now|always|never|only|obey|ignore|answer|"
              r"respond|reply|not|follow)|your\s+(?:instructions|rules|task|role|new|only)|the\s+(?:assistant|model|ai)"
              r"|obey|ignore|disregard|forget|pretend|act\s+as|from\s+now\s+on|answer|respond|reply|say|output|print|"
              r"reveal|sure|here\s+is|here's|i\s+will|i'll|only|always|never|no\s+longer|previous|prior)\b")

# Every view is casefolded already, so the patterns are lower case and compiled without re.IGNORECASE (7x slower).
# Each rule is a list of alternatives, each with anchors: words every match of it contains. An alternative's pattern
# runs only on a view holding one of its anchors (a substring test), which keeps a chunk's screening cheap; the
# benchmark test checks that the anchors never hide a match the bare patterns find.
_Alternative = tuple[str, tuple[str, ...], re.Pattern[str]]


def _rule(rule: str, *alternatives: tuple[tuple[str, ...], str], flags: int = 0) -> list[_Alternative]:
    return [(rule, anchors, re.compile(pattern, flags)) for anchors, pattern in alternatives]


_VERB_ANCHORS = ("ignor", "disregard", "forget", "overr", "overlook", "bypass", "discard", "abandon", "neglect",
                 "aside", "throw out", "pay no", "erase", "wipe", "revoke")
# on the Latin views: one line, casefolded, confusables mapped (and digits undone, spelled-out letters joined)
_LATIN_PATTERNS: list[_Alternative] = [
    *_rule(
        "ignore-instructions",
        (_VERB_ANCHORS, rf"\b{_OVERRIDE_VERB}\b(?:\W+{_FILLER}\b){{0,6}}\W+{_TARGET}\b"),
        (("ignore", "disregard", "forget"),
         rf"\b{_NOT}(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+|anything\s+)?(?:of\s+)?(?:the\s+|this\s+)?"
         rf"(?:above|preceding|previous|prior|foregoing)(?=\s*(?:$|[.,;:!)-]|\s(?:and|then|text|message|content|"
         rf"conversation|instead)\b))"),
        (("ignore", "disregard", "forget"),
         rf"\b{_NOT}(?:ignore|disregard|forget)\s+(?:everything|anything|all|whatever|what)\s+(?:that\s+)?"
         rf"(?:you(?:'ve| have)?\s+(?:been|were)\s+(?:told|given|instructed|taught)|you\s+(?:were|have been)\s+told|"
         rf"(?:i|we)\s+(?:told|said)|(?:said\s+)?(?:above|before|so far|previously|earlier))"),
        (("follow", "obey", "heed", "listen", "comply", "adher", "respect"),
         rf"\b(?:do not|don't|dont|never|stop|no longer|cease|refuse to)\s+(?:follow(?:ing)?|obey(?:ing)?|heed(?:ing)?"
         rf"|listen(?:ing)? to|comply(?:ing)? with|adher(?:e|ing) to|respect(?:ing)?)\s+"
         rf"(?:(?:the|any|all|of|these)\s+)*(?:{_PRIOR}\s+(?:\w+\s+){{0,2}}?{_TARGET}\b|{_TARGET}\s+(?:above|you\s+were\s+given|you\s+received|so\s+far))"),
        (("void", "invalid", "null", "cancel", "revoked", "overridden", "supersed", "no longer"),
         rf"\b{_TARGET}\s+(?:you\s+(?:were\s+given|have\s+been\s+given|received|got|have)|above|before|so far|"
         rf"given\s+(?:before|earlier|above))(?:\s+\w+)?\s+(?:are|is|have\s+been|has\s+been)\s+(?:now\s+)?(?:void|"
         rf"invalid|null|cancel+ed|revoked|overridden|superseded|no longer (?:valid|in effect|binding|applicable))"),
        (("revoked", "cancel", "replaced", "overridden", "removed", "lifted", "disabled", "suspended", "supersed",
          "withdrawn"),
         rf"\byour\s+(?:\w+\s+){{0,2}}?{_TARGET}\s+(?:have|has)\s+(?:now\s+)?been\s+(?:revoked|cancel+ed|replaced|"
         rf"overridden|removed|lifted|disabled|suspended|superseded|withdrawn)"),
        (("overrides", "supersedes", "replaces", "cancels", "voids", "nullifies"),
         rf"\b(?:overrides|supersedes|replaces|cancels|voids|nullifies)\s+(?:all\s+)?your\s+(?:\w+\s+)?{_TARGET}\b"),
        (("no longer", "not appl", "n't appl", "not matter", "n't matter", "not count", "n't count", "not bind",
          "n't bind"),
         r"\b(?:system prompt|instructions|rules|guidelines|restrictions)\s+(?:no longer|do not|don't|does not)\s+"
         r"(?:appl(?:y|ies)|matter|count|bind)"),
        (("no longer",),
         rf"\b(?:previous|prior|earlier|above|original|initial|your|all|the\s+system)\s+(?:\w+\s+)?{_TARGET}\s+(?:are|is)"
         rf"\s+(?:now\s+)?no\s+longer\s+(?:in\s+effect|valid|binding|applicable|active|relevant)"),
        (("told", "asked", "instructed", "supposed"),
         r"\b(?:skip|ignore|bypass|disable)\s+(?:all\s+)?(?:the\s+|your\s+)?(?:\w+\s+){0,2}?(?:checks|filters|"
         r"guardrails|safeguards|steps)\s+you\s+(?:were|have\s+been|are)\s+(?:told|asked|instructed|supposed)"),
        (("contradict", "conflicts", "violates", "breaks", "against"),
         rf"\b(?:even\s+if|even\s+though|although)\s+(?:it|this|that)\s+(?:contradicts|conflicts\s+with|violates|"
         rf"breaks|goes\s+against)\s+your\s+(?:\w+\s+)?{_TARGET}"),
        ((" as your",),
         r"\b(?:treat|use|consider|take)\s+(?:this|it|the\s+following|these\s+lines)\s+as\s+your\s+(?:new\s+|real\s+|"
         r"actual\s+)?(?:system\s+prompt|instructions|rules|directives)"),
        (("your real", "your actual", "your true", "your new", "your only"),
         r"\byour\s+(?:real|actual|true|new|only)\s+(?:task|job|goal|purpose|mission|objective)\b(?:[\s,]+\w+){0,3}?"
         r"[\s,]+is\s+to\b"),
        (("instructions follow", "instructions are", "instructions begin"),
         r"\b(?:the\s+)?(?:actual|real|true|new)\s+instructions\s+(?:follow|are\s+as\s+follows|are\s+below|begin)"),
        (("make up", "invent", "fabricat", "instead"),
         r"\b(?:stop|do not|don't)\s+(?:using|reading|relying on|citing|looking at)\s+(?:the\s+)?(?:provided\s+|"
         r"given\s+|retrieved\s+|above\s+)?(?:documents|context|sources|passages|search results)\b.{0,40}\b(?:make "
         r"up|invent|fabricate|instead)\b"),
    ),
    *_rule(
        "role-override",
        (("now", "no longer"), rf"\byou(?:\s+are|'re|\s+r)\s+(?:now|no longer)\s+(?:\w+\s+){{0,3}}?{_AI}"),
        (("from now on",),
         rf"\bfrom\s+now\s+on,?\s+(?:you|u)\s+(?:(?:are|will\s+be|shall\s+be)\s+(?:\w+\s+){{0,3}}?{_AI}|"
         rf"(?:will|must|shall|should|have to)\s+(?:only\s+|always\s+|never\s+)?(?:answer|respond|reply|act|behave|"
         rf"ignore|pretend|obey|speak|talk|refuse|say|write|roleplay|play))"
         rf"|\bfrom\s+now\s+on,?\s+(?:only\s+|always\s+|never\s+)?(?:answer|respond|reply|speak|talk|write|say)\s+"
         rf"(?:only\s+)?(?:in|with|as|like)\b"),
        ((" as ",),
         r"\b(?:act|behave|roleplay|role-play)\s+as\s+(?:an?\s+|the\s+|my\s+)?(?:\w+\s+){0,2}?(?:jailbroken|"
         r"unfiltered|unrestricted|uncensored|evil|rogue|different)\b"),
        (("restrictions", "rules", "limits", "filters", "guidelines", "censorship"),
         r"\b(?:act|behave|roleplay|role-play|pretend\s+to\s+be)\s+(?:as\s+)?(?:an?\s+)?(?:ai|model|assistant|chatbot|"
         r"bot|llm)\s+(?:that|which|who|with)\s+(?:has\s+|have\s+)?(?:no|zero|without)\s+(?:restrictions|rules|"
         r"limits|filters|guidelines|censorship)"),
        (("pretend",),
         rf"\bpretend\s+(?:that\s+)?(?:to\s+be|you\s+are|you're)\s+(?:an?\s+|the\s+)?(?:\w+\s+)?(?:{_AI}|system|"
         rf"admin|administrator|developer|root|operator|superuser)\b|\bpretend\s+(?:that\s+)?you\s+have\s+no\b"),
        ((" mode",), r"\b(?:enter|activate|switch\s+to|you\s+are\s+in)\s+(?:dan|god|jailbreak|unrestricted)\s+mode\b"),
        ((":",),
         r"\b(?:note|message|instructions?|attention)\s+(?:to|for)?\s*(?:any\s+|all\s+)?(?:ai|llm|language model|"
         r"chatbot|assistant)s?\b(?:\s+\w+){0,3}\s*:"),
        (("if you are a",),
         r"\bif\s+you\s+are\s+an?\s+(?:ai|llm|large language model|language model|chatbot|assistant)(?:\s+(?:model|"
         r"assistant|system|agent|bot))?\s*(?:[,.:;]|reading|processing|summari)"),
        (("summari", "answering questions about"),
         r"\b(?:summari[sz]ing|summari[sz]e|answering questions about)\s+this\s+(?:page|document|text|article|"
         r"email|e-mail|site)\b.{0,80}\b(?:tell|ask|instruct|urge|remind)\s+the\s+(?:user|reader)\b"),
    ),
    *_rule(
        "new-instructions",
        ((":",),
         rf"\b(?:new|updated|real|actual|revised|additional|secret|hidden|override|true|correct)\s+(?:system\s+"
         rf"(?:instructions?|rules|directives|prompt)|(?:instructions?|rules|directives|prompt))\s*:(?:(?<=system\s"
         rf"instructions:)|(?<=system\sinstruction:)|(?<=system\sprompt:)|[^.\n]{{0,80}}{_MODEL_CUE})"),
    ),
    *_rule(
        "reveal-prompt",
        (("system", "prompt you", "instructions you", "developer", "operator", "hidden", "initial", "original",
          "first message", "earlier message"),
         r"\b(?:reveal|print|repeat|show|output|display|tell|give|leak|dump|write out|recite|disclose|expose|share|"
         r"paste|copy)\b(?:\s+me|\s+us)?(?:\s+\w+){0,3}?\s+(?:your|the)\s+(?:full\s+|exact\s+|entire\s+|original\s+|"
         r"initial\s+|hidden\s+|secret\s+|complete\s+)*(?:system\s+(?:prompt|message|instructions)|prompt\s+you|"
         r"instructions\s+you|(?:developer|operator)\s+(?:instructions|prompt|message)|hidden\s+(?:instructions|prompt)"
         r"|initial\s+(?:instructions|prompt)|original\s+(?:instructions|prompt)|(?:first|earlier)\s+message)"),
        (("given", "received", "you got"),
         r"\b(?:reveal|print|repeat|show|output|display|tell\s+me|give\s+me|leak|dump|recite|disclose)\b.{0,40}\b"
         r"(?:instructions|prompt|rules)\s+(?:you\s+(?:were|have\s+been)\s+given|you\s+received|you\s+got|given\s+to\s+you)"),
        (("what",),
         r"\bwhat\s+(?:are|were|is|was)\s+(?:written\s+|said\s+|stated\s+)?(?:in\s+)?your\s+(?:\w+\s+)?"
         r"(?:instructions|system prompt|prompt|rules|directives)\b"),
        (("above", "before this", "came before", "so far"),
         r"\b(?:repeat|print|output|recite)\s+(?:the\s+|all\s+)?(?:text|words|everything|content|messages?)\s+"
         r"(?:above|before\s+this|that\s+came\s+before|so\s+far)"),
        (("system prompt",), r"\bsystem\s+prompt\s*:?\s*(?:reveal|print|show|output|repeat|display)\b"),
    ),
    *_rule(
        "answer-override",
        (("regardless", "no matter"),
         r"\b(?:always|only|just)\s+(?:answer|respond|reply|say|output|write)\b.{0,40}\b(?:regardless\s+of|no\s+matter)"
         r"\s+(?:the\s+|what\s+(?:the\s+)?)?(?:question|user|query|input|prompt|they\s+ask|is\s+asked|asked)"),
        (("the user",),
         r"\b(?:whatever|no\s+matter\s+what|regardless\s+of\s+what)\s+the\s+user\s+(?:asks|says|types|wants|writes"
         r"|requests)"),
    ),
    *_rule(
        "exfiltration",
        (("http", "www.", "@"),
         rf"\b(?:send|post|upload|transmit|forward|leak|exfiltrate|append|submit|e-?mail|include|encode|add)\b"
         rf"(?:\s+\S+){{0,6}}?\s+{_SECRET}\b.{{0,60}}?\b(?:to|into|at|in|via)\s+(?:https?://|www\.|\S+@\S+\.)"),
        (("](",), r"!\[[^\]]*\]\(\s*https?://[^)\s]*(?:\{|%7b|\$\{|<)[^)]*\)"),
        (("render",),
         r"\brender\b.{0,40}\b(?:image|markdown)\b.{0,60}https?://|https?://\S+.{0,40}\brender\b.{0,30}\bimage\b"),
    ),
    *_rule(
        "tool-call",
        (("_",), r"\b(?:call|invoke|execute|trigger|run)\s+(?:the\s+)?[\w.-]*_[\w.-]*\s+(?:tool|plugin|action)\b"),
        (("now", "immediately", "right away", "without asking", "without confirmation"),
         r"\b(?:call|invoke|execute|trigger)\b.{0,40}\b(?:tool|function|plugin)\b.{0,20}\b(?:now|immediately|"
         r"right away|without (?:asking|confirmation))\b"),
        (("there", "that page", "this page", "that site", "this site", "http"),
         r"\bfollow\s+(?:the\s+)?(?:instructions|commands|directions)\s+(?:there|on\s+(?:that|this)\s+(?:page|site)|"
         r"(?:found\s+)?at\s+https?://)"),
    ),
]

# on the line view: casefolded, confusables mapped, line breaks kept (a forged role marker starts a line)
_LINE_PATTERNS: list[_Alternative] = _rule(
    "chat-markup",
    (("<|",), r"<\|(?:im_start|im_end|system|user|assistant|eot_id|start_header_id|end_header_id|begin_of_text)\|>"),
    (("inst]", "<<sys>>", "<</sys>>", "</", "]("),
     r"\[/?inst\]|<</?sys>>|</(?:context|documents?|search_results|retrieved_context|system|instructions)>"
     r"|\[(?:system|assistant)\]\(#"),
    ((":",),
     rf"^[ \t>*#-]*(?:system|assistant|user|human|developer)(?:[ \t]+(?:message|prompt|note|instruction|override))?"
     rf"[ \t]*(?:\(\w+\))?[ \t]*:[^\n]*{_MODEL_CUE}"),
    flags=re.M,
)

# on the native view (one line, casefolded, letters left in their own script): other languages' "ignore / do not
# follow the previous instructions", "forget everything above", "from now on you are", "show the system prompt"
_NATIVE_PATTERNS: list[_Alternative] = [
    *_rule(
        "ignore-instructions",
        (("anweisung", "instruktion", "befehl", "regeln", "vorgabe", "anordnung", "richtlinie"),  # German
         r"\b(?:ignorier\w*|vergiss|vergessen\s+sie|missacht\w*|übergeh\w*|uebergeh\w*|befolge\s+nicht|folge\s+nicht)"
         r"\s+(?:\w+\s+){0,3}?(?:anweisungen|instruktionen|befehle|regeln|vorgaben|anordnungen|richtlinien)\b"),
        (("instructions", "consignes", "directives", "règles", "regles", "ordres"),  # French
         r"\b(?:ignore[rsz]?|oublie[rsz]?|ne\s+tien[st]?\s+pas\s+compte|ne\s+tenez\s+pas\s+compte|fais\s+abstraction"
         r"|ne\s+sui[st]\s+pas|ne\s+suivez\s+pas)\s+(?:de\s+|d'|des\s+)?(?:toutes?\s+)?(?:les\s+|tes\s+|vos\s+|ces\s+|"
         r"mes\s+)?(?:\w+\s+)?(?:instructions|consignes|directives|règles|regles|ordres)\b"),
        (("instrucciones", "indicaciones", "órdenes", "ordenes", "reglas", "directrices"),  # Spanish
         r"\b(?<!no\s)(?:ignora|ignore|ignorar|ignoren|olvida|olvide|olvidar|olviden|omite|omita|descarta|descarte|"
         r"no\s+sigas|no\s+siga|no\s+sigan|no\s+obedezcas)\s+(?:todas?\s+)?(?:las|tus|sus|estas|esas)\s+(?:\w+\s+)?"
         r"(?:instrucciones|indicaciones|órdenes|ordenes|reglas|directrices)\b"),
        (("instruções", "instrucoes", "regras", "diretrizes", "ordens"),  # Portuguese
         r"\b(?<!não\s)(?<!nao\s)(?:ignore|ignora|ignorar|esqueça|esqueca|esquece|esquecer|desconsidere|"
         r"desconsidera|não\s+siga|nao\s+siga|não\s+sigas)\s+(?:todas?\s+)?(?:as|suas|tuas|estas|essas)\s+(?:\w+\s+)?"
         r"(?:instruções|instrucoes|regras|diretrizes|ordens)\b"),
        (("istruzioni", "regole", "indicazioni", "direttive"),  # Italian
         r"\b(?<!non\s)(?:ignora|ignori|ignorare|dimentica|dimentichi|dimenticare|trascura|trascuri|non\s+seguire|"
         r"non\s+segui)\s+(?:tutte\s+)?(?:le|tue|sue|queste)\s+(?:\w+\s+)?(?:istruzioni|regole|indicazioni|direttive)\b"),
        # "forget everything said above" (de, fr, es, pt, it)
        (("alles",), r"\b(?:vergiss|ignoriere|ignorier)\s+(?:einfach\s+)?alles\b.{0,30}\b(?:vorher|zuvor|oben|bisher|"
                     r"davor)\b"),
        (("tout ce",), r"\b(?:ignore|oublie)[rsz]?\s+tout\s+(?:ce\s+qui|ce\s+que)\b.{0,30}\b(?:avant|précède|"
                       r"ci-dessus|dessus)"),
        (("todo lo",), r"\b(?:olvida|ignora|olvide|ignore)\s+todo\s+(?:lo\s+(?:anterior|dicho|previo)|lo\s+que)"),
        (("tudo",), r"\b(?:esqueça|esqueca|ignore|ignora)\s+tudo\s+(?:o\s+que|(?:o\s+)?(?:anterior|acima|dito))"),
        (("quanto", "ciò che", "quello che"),
         r"\b(?:ignora|dimentica)\s+(?:tutto\s+)?(?:quanto|ciò\s+che|quello\s+che)\s+(?:\w+\s+){0,2}?(?:prima|sopra)\b"),
        (("zignoruj", "ignoruj", "zapomnij"),  # Polish
         r"\b(?:zignoruj|ignoruj|zapomnij)\s+(?:o\s+)?(?:\w+\s+){0,2}?(?:instrukcj\w*|polece\w*|zasad\w*)"),
        (("yok say", "görmezden", "unut"),  # Turkish
         r"\b(?:talimat\w*|kural\w*|komut\w*)\s+(?:\w+\s+){0,2}?(?:yok\s+say|görmezden\s+gel|unut)"),
        (("negeer", "vergeet"),  # Dutch
         r"\b(?:negeer|vergeet)\s+(?:alle\s+)?(?:de\s+|je\s+|jouw\s+|uw\s+)?(?:\w+\s+)?"
         r"(?:instructies|regels|aanwijzingen)\b"),
        (("игнорир", "забуд", "забыть", "внимани", "пренебрег", "не след"),  # Russian
         r"(?<!не\s)(?:игнорир\w*|проигнорир\w*|забудь\w*|забыть|не\s+обращай\w*\s+внимани\w*\s+на|пренебреги\w*|"
         r"не\s+следуй\w*)\s+(?:\w+\s+){0,3}?(?:инструкци\w*|указани\w*|правил\w*|команд\w*|промпт\w*)"
         r"|(?<!не\s)(?:игнорир\w*|проигнорир\w*|забудь\w*)\s+(?:вс[её]|всё\s+то),?\s+(?:что|сказанное)\b.{0,30}"
         r"(?:выше|раньше|ранее|до\s+этого)"),
        (("忽略", "无视", "忘记", "忘掉", "不要理会", "不要遵守", "不要遵循", "别管"),  # Chinese
         r"(?<!不要)(?<!不)(?<!别)(?:忽略|无视|忘记|忘掉|不要理会|不要遵守|不要遵循|别管)[^。！？.!?]{0,10}"
         r"(?:指令|指示|说明|提示|规则|命令|要求)"
         r"|(?<!不要)(?<!不)(?<!别)(?:忽略|无视|忘记|忘掉)(?:掉)?(?:上面|以上|之前|前面|上述)(?:的)?(?:所有)?(?:内容|文字|信息)"),
        (("無視", "忘れ", "무시", "잊"),  # Japanese and Korean put the object first
         r"(?:指示|命令|ルール|プロンプト|指令)[^。！？]{0,10}(?:無視|忘れ)|(?:지시|명령|규칙|프롬프트)[^.!?]{0,10}(?:무시|잊)"),
    ),
    *_rule(
        "role-override",
        (("你",),
         r"(?:从现在开始|从现在起)[，,\s]*你(?:是|现在是)"
         r"|(?:你现在是|现在你是)[^。！？]{0,10}(?:ai|dan|助手|模型|没有限制|不受限制)"),
    ),
    *_rule(
        "reveal-prompt",
        (("系统", "初始指令"),
         r"(?:输出|显示|告诉我|泄露|打印|重复|给我看)[^。！？.!?]{0,6}"
         r"(?:系统提示|系统提示词|初始指令|系统指令|系统消息)"),
        (("prompt", "systemanweisung"),
         r"\b(?:zeige|gib|verrate)\s+(?:\w+\s+){0,3}?(?:system-?prompt|systemanweisung\w*)"),
        (("системн",), r"\b(?:покажи|выведи|раскрой|напиши)\s+(?:\w+\s+){0,3}?(?:системн\w+\s+(?:промпт|подсказк\w*|"
                       r"инструкци\w*))"),
    ),
]


@dataclass(frozen=True)
class InjectionFinding:
    rule: str
    excerpt: str


def _leet(text: str) -> str:
    """Undo digit-for-letter swaps inside words that mix letters and digits ("1gn0r3" -> "ignore"); numbers alone
    ("1998", "8 GB") are left as they are."""
    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        if _LEET_CHARS.intersection(word) and not word.isdigit() and any(c.isalpha() for c in word):
            return word.translate(_LEET)
        return word

    return _LEET_TOKEN.sub(swap, text) if _LEET_MIXED.search(text) else text


def _joined(text: str) -> str:
    """Join words spelled out letter by letter ("d-i-s-r-e-g-a-r-d" -> "disregard")."""
    return _SPELLED.sub(lambda m: re.sub(r"[-._* ]", "", m.group(0)), text)


def _base(text: str, format_chars: str) -> str:
    """NFKC, then format characters (Cf) and other invisible code points removed ("") or turned into spaces (" "),
    then casefolded."""
    if text.isascii():
        return text.lower()
    text = _FORMAT.sub(format_chars, _IGNORABLE.sub("", unicodedata.normalize("NFKC", text)))
    return text.casefold()


def normalize_for_screening(text: str) -> str:
    """The main Latin view screening matches: NFKC, no format characters, confusables mapped to Latin, whitespace
    collapsed to single spaces (line breaks included), casefolded."""
    return _SPACES.sub(" ", _base(text, "").translate(_CONFUSABLES)).strip()


def _views(text: str) -> tuple[list[str], list[str], list[str]]:
    """(Latin views, line views, native-script views) of `text`, each deduplicated. Two variants of each: format
    characters removed (a zero-width joiner inside a word) and turned into spaces (a zero-width space between
    words)."""
    latin: list[str] = []
    lines: list[str] = []
    native: list[str] = []
    for fmt in ("", " ") if not text.isascii() and _FORMAT.search(text) else ("",):
        base = _base(text, fmt)
        mapped = base if base.isascii() else base.translate(_CONFUSABLES)
        flat = _SPACES.sub(" ", mapped).strip()
        for view, into in ((flat, latin), (_leet(flat), latin), (_joined(flat), latin),
                           (_HORIZONTAL.sub(" ", mapped), lines), (_SPACES.sub(" ", base).strip(), native)):
            if view not in into:
                into.append(view)
    return latin, lines, native


def _screen(text: str, anchored: bool = True) -> InjectionFinding | None:
    latin, lines, native = _views(text)
    for table, views in ((_LATIN_PATTERNS, latin), (_LINE_PATTERNS, lines), (_NATIVE_PATTERNS, native)):
        for rule, anchors, pattern in table:
            for view in views:
                if anchored and not any(a in view for a in anchors):
                    continue
                m = pattern.search(view)
                if m:
                    start, end = max(0, m.start() - 20), min(len(view), m.end() + 20)
                    return InjectionFinding(rule, _SPACES.sub(" ", view[start:end]).strip())
    return None


def find_injection(text: str) -> InjectionFinding | None:
    """The first instruction-like passage in `text` (matched on its normalised views), or None. The excerpt is
    taken from the normalised text, where the evasion is undone and the phrase is readable."""
    return _screen(text)


def injection_benchmark(path: str | os.PathLike[str], split: str | None = None) -> dict[str, Any]:
    """Detection and false-positive rates of `find_injection` on a JSONL file of cases (`text`, `injection`: bool,
    `kind`, optional `split`), restricted to one split if given, with the missed injections and the flagged benign
    texts listed so a regression can be read off."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if split is None or r.get("split") == split]
    found = [find_injection(r["text"]) is not None for r in rows]
    positives = [(r, f) for r, f in zip(rows, found, strict=True) if r["injection"]]
    negatives = [(r, f) for r, f in zip(rows, found, strict=True) if not r["injection"]]
    detected = sum(f for _, f in positives)
    false_positives = sum(f for _, f in negatives)
    by_kind: dict[str, list[int]] = {}
    for r, f in positives:
        counts = by_kind.setdefault(r.get("kind", ""), [0, 0])
        counts[0] += f
        counts[1] += 1
    return {
        "cases": len(rows), "injections": len(positives), "benign": len(negatives),
        "detected": detected, "false_positives": false_positives,
        "detection_rate": detected / len(positives) if positives else 0.0,
        "false_positive_rate": false_positives / len(negatives) if negatives else 0.0,
        "detected_by_kind": {k: f"{d}/{n}" for k, (d, n) in sorted(by_kind.items())},
        "missed": [{"kind": r.get("kind", ""), "text": r["text"]} for r, f in positives if not f],
        "false_positive_texts": [{"kind": r.get("kind", ""), "text": r["text"]} for r, f in negatives if f],
    }


def strip_control_tokens(text: str) -> str:
    """Remove chat-template control tokens so a chunk cannot open a turn of its own."""
    return _CONTROL_TOKENS.sub(" ", text)


# -- PII redaction (request logs) --------------------------------------------------------------------------------------
_PII_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("CARD", re.compile(r"\b(?:\d[ -]?){13,19}\b")),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b")),
    ("SSN", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("PHONE", re.compile(r"(?<![\w-])\+?\d{1,3}?[ .-]?\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]\d{3,4}\b")),
    ("IP", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")),
]


def redact_pii(text: str) -> str:
    """Replace e-mail addresses, card / phone / social-security numbers, IBANs and IP addresses by [KIND].

    Pattern-based: it catches the common formats and is meant for logs, not as a compliance guarantee.
    """
    for kind, pattern in _PII_PATTERNS:
        text = pattern.sub(f"[{kind}]", text)
    return text
