"""The symbolic step for questions over many pages: counts, comparisons, superlatives and sums.

A copying reader answers a question whose answer is written on one page. "Which office has the
most staff?" is written on none: each office's page says its own staff, and the answer is a
comparison of those facts. This module does that comparison in code, over per-page facts that
the reader copies out one page at a time:

1. ``parse`` recognises the question's form (English, the usual wordings) and takes it apart: the
   kind of thing compared (``noun``, "office"), what qualifies it (``qualifier``, "Pinecrest
   Freight"), the attribute (``attribute``, "staff") and the direction, threshold or the two
   things named.
2. ``entity_of`` finds what a page is about: the first "<Name> <noun>" it writes ("Curitiba
   office" in "Pinecrest Freight: Curitiba office, annual summary"), on pages that name the
   qualifier.
3. ``fact_question`` asks for the attribute of that one entity ("How many staff does the Curitiba
   office have?"), which the backend answers from that page alone; ``number`` reads the value.
4. ``answer`` combines the values: the entity with the most, the count over a threshold, the
   sum, the count of entities.

Nothing here knows a model or a page store: the backend gives it texts and a way to ask a page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

# Directions: the words that ask for the larger or the smaller value.
_MORE = {"more", "most", "higher", "highest", "larger", "largest", "bigger", "biggest", "greater",
         "greatest", "over", "above"}  # fmt: skip
_LESS = {"fewer", "fewest", "less", "least", "lower", "lowest", "smaller", "smallest", "under",
         "below"}  # fmt: skip
_DIRECTION = "|".join(sorted(_MORE | _LESS, key=len, reverse=True))
_VERB = (
    r"(?:has|had|have|is|was|are|were|employs?|employed|reports?|reported|makes?|made|earns?|"
    r"earned)"
)
_PREPOSITIONS = {"for", "in", "of", "on", "at", "to", "from", "by", "with", "among", "between"}
_POLITE = re.compile(
    r"^(?:please |can you tell me |could you (?:tell me|find out) |do you know |"
    r"i need to know:? |quick one:? |hi,? |according to the documents,? |from the files,? )+",
    re.IGNORECASE,
)

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    # Which Acme office has more staff, Ghent or Portland?
    ("compare", re.compile(
        rf"^(?:which|what) (?P<np>.+?) {_VERB} (?:the )?(?P<dir>{_DIRECTION}) (?P<attr>.+?),? "
        r"(?P<a>[^,]+?),? or (?P<b>[^,]+?)$")),
    # Which Acme office has the most staff? / had the highest revenue last year?
    ("extreme", re.compile(
        rf"^(?:which|what) (?P<np>.+?) {_VERB} the (?P<dir>{_DIRECTION}) (?P<attr>.+?)$")),
    # How many Acme offices have more than 200 staff?
    ("count_over", re.compile(
        rf"^how many (?P<np>.+?) {_VERB} (?P<dir>{_DIRECTION}) (?:than )?(?P<n>\d[\d,.]*) "
        r"(?P<attr>.+?)$")),
    # What is the combined staff of the Acme offices in Ghent and Portland?
    ("sum", re.compile(
        r"^what (?:is|was|are|were) the (?:combined|total|sum of the|joint) (?P<attr>.+?) "
        r"(?:of|at|for) the (?P<np>.+?) (?:in|at|of) (?P<a>.+?) and (?P<b>.+?)$")),
    # How many offices does Acme have?
    ("count", re.compile(
        r"^how many (?P<np>[a-z]+s) (?:does|do|did) (?P<owner>(?!the ).+?) have$")),
]  # fmt: skip


# Attributes that are amounts, not counts: asked "What was the revenue of ...?"
_AMOUNTS = {"revenue", "turnover", "profit", "sales", "income", "budget", "cost", "costs", "price"}
MAX_ENTITIES = 64  # the most one-page questions one question may ask (each reads one page)


@dataclass
class Query:
    """A question over many pages, taken apart."""

    kind: str  # "compare", "extreme", "count_over", "sum", "count"
    noun: str  # the kind of thing compared, singular: "office"
    qualifier: list[str] = field(default_factory=list)  # words a page must name: ["Acme"]
    attribute: str = ""  # "staff", "revenue last year"
    larger: bool = True  # the larger value wins (most, more, over) or the smaller
    threshold: float | None = None  # count_over
    named: list[str] = field(default_factory=list)  # compare, sum: the two entities named


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _noun_phrase(np: str) -> tuple[str, list[str]]:
    """The noun phrase "the Acme offices" -> ("office", ["Acme"])."""
    words = [w for w in np.split() if w.lower() not in {"the", "a", "an", "our", "all", "of"}]
    if not words:
        return "", []
    return _singular(words[-1].lower()), words[:-1]


def parse(question: str) -> Query | None:
    """The question's form, or None where it is not one of the forms this step answers."""
    q = " ".join(question.strip().split()).rstrip("?.! ")
    q = _POLITE.sub("", q)
    for kind, pattern in _PATTERNS:
        m = pattern.match(q.lower())
        if not m:
            continue

        def original(group: str, m: re.Match[str] = m) -> str:  # the question's own casing
            return q[m.start(group) : m.end(group)]

        if kind == "count":
            owner = original("owner").split()
            if not all(w[:1].isupper() for w in owner):  # a name owns offices; "each line" not
                return None
            return Query(kind, _noun_phrase(original("np"))[0], qualifier=owner)
        noun, qualifier = _noun_phrase(original("np"))
        if not noun or m.group("attr").split()[0] in _PREPOSITIONS:  # "highest for realtime"
            return None
        query = Query(kind, noun, qualifier, attribute=original("attr").strip())
        direction = m.groupdict().get("dir")
        query.larger = direction not in _LESS
        if kind == "count_over":
            query.threshold = number(m.group("n"))
        if kind in ("compare", "sum"):
            query.named = [original("a").strip(), original("b").strip()]
        return query
    return None


_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def number(text: str) -> float | None:
    """The first number written in ``text`` ("EUR 8,524,000" -> 8524000.0), None if none."""
    m = _NUMBER.search(text)
    if not m:
        return None
    try:
        return float(m.group().replace(",", ""))
    except ValueError:
        return None


def entity_of(text: str, query: Query) -> str | None:
    """What a page is about, as the question's noun names it: the first "<Name> <noun>" the page
    writes (capitalised words before the noun, the qualifier's words left out), where the page
    names every qualifier word; None otherwise."""
    lowered = text.lower()
    if any(w.lower() not in lowered for w in query.qualifier):
        return None
    pattern = re.compile(
        r"((?:[A-Z][\w'.&-]*[ \t]+)*[A-Z][\w'.&-]*)[ \t]+" + re.escape(query.noun) + r"s?\b"
    )
    skip = {w.lower() for w in query.qualifier} | {"the", "our", "this", "that", "a", "an"}
    for m in pattern.finditer(text):
        words = [w for w in m.group(1).split() if w.lower().strip(":,") not in skip]
        if words and all(w[:1].isupper() for w in words):
            return " ".join(words)
    return None


def fact_question(query: Query, entity: str) -> str:
    """The one-page question whose answer is the entity's value of the attribute."""
    subject = f"the {entity} {query.noun}"
    if query.attribute.split()[0].lower() in _AMOUNTS:  # "What was the revenue of ...?"
        return f"What was the {query.attribute} of {subject}?"
    return f"How many {query.attribute} does {subject} have?"


@dataclass
class Fact:
    entity: str
    page: int  # index into the pages given
    value: float | None = None


@dataclass
class Result:
    text: str
    pages: list[int]  # the pages the answer rests on, the deciding one first


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def answer(
    query: Query, texts: list[str | None], ask: Callable[[str, int], str | None]
) -> Result | None:
    """Answer ``query`` over pages ``texts`` (None: a page without text). ``ask(question, page)``
    answers a one-page question from that page alone (None: not found there). None where the
    pages do not hold what the answer needs (fewer than two entities, a named one missing, a value
    not found): the caller then says not found, or tries its ordinary path."""
    entities: dict[str, Fact] = {}
    for i, text in enumerate(texts):
        if text and (name := entity_of(text, query)) and name.lower() not in entities:
            entities[name.lower()] = Fact(name, i)
    if query.kind == "count":
        if len(entities) < 2:
            return None
        facts = list(entities.values())
        return Result(str(len(facts)), [f.page for f in facts])
    if query.named:
        wanted = []
        for name in query.named:
            fact = entities.get(name.lower())
            if fact is None:
                return None
            wanted.append(fact)
        facts = wanted
    else:
        facts = list(entities.values())
        if not 2 <= len(facts) <= MAX_ENTITIES:  # hundreds of pages to ask: not this step's
            return None
    for fact in facts:
        got = ask(fact_question(query, fact.entity), fact.page)
        fact.value = number(got) if got else None
    known = [f for f in facts if f.value is not None]
    if query.named and len(known) < len(facts):
        return None
    if len(known) < 2 and query.kind != "count_over":
        return None

    def value(f: Fact) -> float:
        assert f.value is not None
        return f.value

    if query.kind in ("extreme", "compare"):
        best = (max if query.larger else min)(known, key=value)
        return Result(best.entity, [best.page] + [f.page for f in known if f is not best])
    if query.kind == "sum":
        return Result(_fmt(sum(value(f) for f in known)), [f.page for f in known])
    if query.kind == "count_over":
        if not known or query.threshold is None:
            return None
        t = query.threshold
        hits = [f for f in known if (value(f) > t if query.larger else value(f) < t)]
        return Result(str(len(hits)), [f.page for f in hits])
    return None
