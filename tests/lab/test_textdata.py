"""The text-tier data engine: fact spans are where the bytes say; splits never share values."""

from __future__ import annotations

import random

import pytest

from lab import textdata


@pytest.mark.parametrize("seed", range(20))
def test_fact_spans_are_the_answer_bytes(seed):
    page = textdata.make_page(random.Random(seed), "train")
    data = page.text.encode()
    assert page.text and len(data) <= 4000
    for fact in page.facts:
        span = data[fact.start : fact.end].decode()
        assert " ".join(span.split()) == " ".join(fact.answer.split())


def test_pages_are_generated_not_pooled():
    rng = random.Random(0)
    texts = {textdata.make_page(rng, "train").text for _ in range(50)}
    assert len(texts) == 50


def test_heldout_answers_never_appear_in_training_pages():
    held = [textdata.ask_sample(random.Random(i), "heldout", 1, 0.0) for i in range(30)]
    train_text = " ".join(textdata.make_page(random.Random(i), "train").text for i in range(300))
    numeric = [s.answer for s in held if any(c.isdigit() for c in s.answer) and len(s.answer) > 4]
    assert numeric and not [a for a in numeric if a in train_text]


def test_ask_sample_places_the_answer_on_its_page_or_nowhere():
    rng = random.Random(3)
    for _ in range(20):
        s = textdata.ask_sample(rng, "train", 5, p_absent=0.3)
        assert s.question and 1 <= len(s.pages) <= 6
        if s.page < 0:
            assert s.answer == "" and s.start == -1
        else:
            assert s.pages[s.page].encode()[s.start : s.end].decode().split() == s.answer.split()
            assert sum(s.answer in p for p in s.pages) == 1


def test_paraphrase_keeps_the_question_recognisable():
    rng = random.Random(1)
    q = "What is the access code for the Falcon archive?"
    forms = {textdata.paraphrase(rng, q) for _ in range(40)}
    assert len(forms) > 5
    assert all("falcon archive" in f.lower() for f in forms)


def test_a_how_long_question_is_answered_by_a_duration():
    rng = random.Random(5)
    asked = [textdata._tech_fact(rng, textdata.synth._Values(rng, "train")) for _ in range(400)]
    durations = [(q, a) for _, q, a in asked if q.startswith("For how long")]
    assert durations
    for _, answer in durations:
        assert answer.split()[-1] in textdata._DURATIONS, answer


def test_a_page_that_states_the_questions_fact_conflicts_and_leaves_the_haystack():
    """The needle sections' haystacks (lab.eval_text.haystack) leave out a page that states the
    question's fact with another answer: two shipments SHP-64333 with two destinations among a
    thousand pages make the question ambiguous, not a needle."""
    from lab.eval_text import haystack

    rng = random.Random(5)
    s = textdata.ask_sample(rng, "heldout", 1, p_absent=0.0)
    assert s.key  # the fact's own question, before paraphrase
    twin = textdata.make_page(random.Random(6), "heldout")
    twin.facts.append(textdata.TextFact(s.key, "another answer", 0, 1))
    other = textdata.make_page(random.Random(7), "heldout")
    assert textdata.conflicts(twin, s.key) and not textdata.conflicts(other, s.key)
    assert haystack([twin, other], 2, s) == [other.text]


def test_a_page_cut_short_keeps_no_question_about_what_the_cut_took():
    """A memo cut before its header loses its sender: "Which extension is given in Mei Richter's
    memo?" can then not be told from any other memo's extension, so it is not asked."""
    cut = 0
    for i in range(400):
        page = textdata.make_page(random.Random(f"cut/{i}"), "heldout", max_bytes=700)
        if len(page.text.encode()) < 690:
            continue  # not cut
        cut += 1
        for fact in page.facts:
            assert all(name in page.text for name in textdata._names(fact.question)), fact
    assert cut > 100
    assert textdata._names("Which extension is given in Mei Richter's memo on INC-7?") == [
        "Mei",
        "Richter",
        "INC-7",
    ]
