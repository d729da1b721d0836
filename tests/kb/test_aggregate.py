"""The symbolic step over per-page facts: questions taken apart, entities found on pages, and
answers combined from one-page answers (here given by a table, not a model)."""

from __future__ import annotations

import pytest

from kb import aggregate
from kb.aggregate import Query, answer, entity_of, parse

PAGES = [
    "Acme: Lisbon office, annual summary\nThe Lisbon office has 37 staff. Revenue: EUR 1,200,000.",
    "Acme: Porto office, annual summary\nStaff: 120\nRevenue last year: EUR 800,000",
    "Umbrella: Madrid office, annual summary\nThe Madrid office has 500 staff.",
    "Acme: Faro office, annual summary\nOffice Staff Revenue\nFaro 64 EUR 2,500,000",
    "Minutes of the safety meeting. Fire drills are held twice a year.",
]
VALUES = {  # what a reader would copy from each page
    ("staff", 0): "37", ("staff", 1): "120", ("staff", 2): "500", ("staff", 3): "64",
    ("revenue", 0): "EUR 1,200,000", ("revenue", 1): "EUR 800,000", ("revenue", 3): "2,500,000",
}  # fmt: skip


def ask(question: str, page: int) -> str | None:
    asked.append((question, page))
    return VALUES.get(("revenue" if "revenue" in question else "staff", page))


asked: list[tuple[str, int]] = []


@pytest.mark.parametrize(
    ("question", "kind", "noun", "qualifier", "extra"),
    [
        ("Which Acme office has the most staff?", "extreme", "office", ["Acme"], {"larger": True}),
        ("Quick one: which Acme office has the fewest staff", "extreme", "office", ["Acme"],
         {"larger": False}),
        ("Which Acme office has more staff, Lisbon or Porto?", "compare", "office", ["Acme"],
         {"named": ["Lisbon", "Porto"]}),
        ("How many Acme offices have more than 50 staff?", "count_over", "office", ["Acme"],
         {"threshold": 50.0}),
        ("What is the combined staff of the Acme offices in Lisbon and Faro?", "sum", "office",
         ["Acme"], {"named": ["Lisbon", "Faro"]}),
        ("How many offices does Acme have?", "count", "office", ["Acme"], {}),
        ("Which Acme office had the highest revenue last year?", "extreme", "office", ["Acme"],
         {"attribute": "revenue last year"}),
    ],
)  # fmt: skip
def test_questions_over_many_pages_are_taken_apart(question, kind, noun, qualifier, extra):
    q = parse(question)
    assert q is not None and (q.kind, q.noun, q.qualifier) == (kind, noun, qualifier)
    for key, value in extra.items():
        assert getattr(q, key) == value


@pytest.mark.parametrize(
    "question",
    [
        "How many engineers work in Lisbon?",
        "How many staff does the Acme office in Lisbon have?",  # a one-page fact
        "How many fields does each line of /etc/shadow have?",  # not a name's things
        "Which priority value is the highest for realtime and best-effort?",
        "What is the default compression level?",
        "Who manages the Lisbon office?",
    ],
)
def test_one_page_questions_are_left_to_the_reader(question):
    assert parse(question) is None


def test_a_page_is_about_the_first_named_thing_of_the_question_s_kind():
    q = Query("extreme", "office", ["Acme"], "staff")
    assert [entity_of(p, q) for p in PAGES] == ["Lisbon", "Porto", None, "Faro", None]
    assert entity_of(PAGES[2], Query("extreme", "office", [], "staff")) == "Madrid"
    assert aggregate.number("EUR 8,524,000") == 8524000.0 and aggregate.number("none") is None


@pytest.mark.parametrize(
    ("question", "expected", "first_page"),
    [
        ("Which Acme office has the most staff?", "Porto", 1),
        ("Which Acme office has the fewest staff?", "Lisbon", 0),
        ("Which Acme office has more staff, Lisbon or Faro?", "Faro", 3),
        ("How many Acme offices have more than 50 staff?", "2", 1),
        ("How many Acme offices have fewer than 50 staff?", "1", 0),
        ("What is the combined staff of the Acme offices in Lisbon and Faro?", "101", 0),
        ("How many offices does Acme have?", "3", 0),
        ("Which Acme office had the highest revenue last year?", "Faro", 3),
        ("Which office has the most staff?", "Madrid", 2),  # no qualifier: every office
        ("What is the total revenue of the Acme offices in Lisbon and Porto?", "2000000", 0),
    ],
)
def test_answers_are_combined_from_one_page_answers(question, expected, first_page):
    asked.clear()
    q = parse(question)
    assert q is not None
    got = answer(q, PAGES, ask)
    assert got is not None and got.text == expected and got.pages[0] == first_page
    assert all(page != 4 for _, page in asked)  # the page about no office is never asked


def test_what_the_pages_do_not_hold_is_not_answered():
    for question in (
        "Which Acme office has more staff, Lisbon or Berlin?",  # Berlin: no page
        "Which Globex office has the most staff?",  # no page names Globex
        "How many offices does Umbrella have?",  # one office: nothing to count across
    ):
        q = parse(question)
        assert q is not None and answer(q, PAGES, ask) is None, question
    q = parse("Which Acme office has the most staff?")
    assert q is not None and answer(q, PAGES, lambda question, page: None) is None
    assert answer(q, [None, None], ask) is None  # pages without text (vision tiers)
