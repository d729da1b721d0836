"""The synthetic data engine: deterministic, rendered through ingest, facts that hold, a held-out
split that shares no answer with training."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from lab import data
from lab.data import (
    LAYOUTS,
    Fact,
    PoolSpec,
    build_pool,
    cross_document_set,
    filler_page,
    make_document,
    needle_page,
    real_page,
)


def norm(text: str) -> str:
    return " ".join(text.split())


def image_hash(page: data.SyntheticPage) -> str:
    return hashlib.sha256(page.image.tobytes()).hexdigest()


def test_same_seed_same_document_different_seeds_differ():
    a, b = make_document(11), make_document(11)
    assert [p.text for p in a.pages] == [p.text for p in b.pages]
    assert [image_hash(p) for p in a.pages] == [image_hash(p) for p in b.pages]
    assert a.facts == b.facts and a.title == b.title and a.layout == b.layout
    c = make_document(12)
    assert [p.text for p in c.pages] != [p.text for p in a.pages]
    assert image_hash(c.pages[0]) != image_hash(a.pages[0])
    assert needle_page(3)[1] == needle_page(3)[1]
    assert needle_page(3)[1] != needle_page(4)[1]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_renders_a_canonical_page_stating_its_facts(layout):
    doc = make_document(5, layout=layout)
    assert doc.layout == layout and doc.split == "train" and doc.seed == 5
    assert 1 <= len(doc.pages) <= 2
    for page in doc.pages:
        assert page.image.size == (1024, 1024) and page.image.mode == "RGB"
        assert page.text.strip()
    assert doc.facts, "every document states facts"
    assert norm(doc.title) in norm(doc.pages[0].text)
    for fact in doc.facts:
        assert fact.question.endswith("?") and fact.answer
        assert 1 <= fact.page <= len(doc.pages)
        assert norm(fact.answer) in norm(doc.pages[fact.page - 1].text), fact
    assert len({f.question for f in doc.facts}) == len(doc.facts)


def test_documents_use_several_fonts_and_sizes():
    names = {f.name for f in data.FONTS}
    assert {"helvetica", "times", "courier"} <= names
    rng = data._rng("test", 0, "train")
    styles = {data._choose_style(rng, "paragraphs", 1500) for _ in range(60)}
    assert len({s.font.name for s in styles}) >= 3
    assert {s.size for s in styles} >= {9, 14}
    assert {s.columns for s in (data._choose_style(rng, "two_column", 1500),)} == {2}


def test_target_chars_sets_the_page_length():
    short = make_document(2, max_pages=1, target_chars=400)
    long = make_document(2, max_pages=1, target_chars=5200)
    assert len(short.pages[0].text) < 1200
    assert len(long.pages[0].text) > 4200
    assert long.facts


def test_heldout_split_shares_no_answer_and_no_names_with_train():
    train = [make_document(s) for s in range(12)]
    held = [make_document(s, "heldout") for s in range(12)]
    assert all(d.split == "heldout" for d in held)
    train_answers = {f.answer for d in train for f in d.facts}
    held_answers = {f.answer for d in held for f in d.facts}
    assert train_answers and held_answers
    assert not train_answers & held_answers
    # the same seed in the other split is another random stream: other text, other pixels
    for t, h in zip(train, held, strict=True):
        assert t.pages[0].text != h.pages[0].text
    train_needles = {needle_page(s)[1].answer for s in range(6)}
    held_needles = {needle_page(s, "heldout")[1].answer for s in range(6)}
    assert not train_needles & held_needles
    for pool in (data._CITIES, data._FIRST_NAMES, data._LAST_NAMES, data._COMPANY_WORDS,
                 data._CODENAMES):  # fmt: skip
        assert not set(data._pool(pool, "train")) & set(data._pool(pool, "heldout"))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        make_document(0, "test")


def test_needle_page_states_its_one_fact_and_fillers_state_none():
    for seed in range(4):
        page, fact = needle_page(seed)
        assert page.image.size == (1024, 1024)
        assert fact.page == 1
        assert norm(fact.answer) in norm(page.text)
        project = re.search(r"the (\w+) (project|archive|review|prototype)", fact.question)
        assert project, fact.question
        assert norm(page.text).count(project.group(1)) == 1  # said once, on this page only
    codenames = set(data._CODENAMES)
    for seed in range(4):
        filler = filler_page(seed)
        assert filler.image.size == (1024, 1024) and filler.text.strip()
        assert not codenames & set(re.findall(r"\w+", filler.text))


def test_real_pages_render_real_prose_and_code_never_an_evaluated_document():
    from lab import realtext

    evaluated = set().union(*(realtext.shingles(t) for t in realtext.evaluated_texts()))
    assert len(evaluated) > 10_000  # the natural documents and the real PDFs were read
    train, held = realtext.split_pages("train"), realtext.split_pages("heldout")
    assert held and not set(train) & set(held)
    assert not any(realtext.shingles(p) & evaluated for p in train + held)
    pages = [real_page(seed) for seed in range(6)]
    assert [image_hash(p) for p in pages] == [image_hash(real_page(s)) for s in range(6)]
    assert len({image_hash(p) for p in pages}) == 6
    for page in pages:
        assert page.image.size == (1024, 1024) and len(page.words) > 20
        words = norm(page.text).split()
        # the page's words come from one of the real pages, in its order
        assert any(" ".join(words[:4]) in norm(t) for t in train)
    with pytest.raises(ValueError, match="split"):
        realtext.split_pages("test")


def test_cross_document_facts_are_computed_from_the_documents():
    docs, facts = cross_document_set(3, n_docs=5)
    assert len(docs) == 5 and all(f.page == 0 for f in facts)
    staff = {}
    for doc in docs:
        assert len(doc.pages) == 1 and doc.pages[0].image.size == (1024, 1024)
        (fact,) = [f for f in doc.facts if f.question.startswith("How many staff")]
        city = re.search(r"office in (.+) have\?", fact.question).group(1)
        staff[city] = int(fact.answer)
        assert norm(city) in norm(doc.pages[0].text)
    by = {f.question: f.answer for f in facts}
    for question, answer in by.items():
        if m := re.match(r"How many .+ offices have more than (\d+) staff\?", question):
            assert int(answer) == sum(n > int(m.group(1)) for n in staff.values())
        elif m := re.match(r"Which .+ office has more staff, (.+) or (.+)\?", question):
            assert answer == max(m.group(1), m.group(2), key=staff.get)
        elif question.endswith("has the most staff?"):
            assert answer == max(staff, key=staff.get)
        elif question.endswith("has the fewest staff?"):
            assert answer == min(staff, key=staff.get)
        elif m := re.match(r"What is the combined staff of .+ in (.+) and (.+)\?", question):
            assert int(answer) == staff[m.group(1)] + staff[m.group(2)]
        elif question.startswith("How many offices"):
            assert answer == "5"
    assert sum(q.startswith("How many") for q in by) >= 2
    assert any("more staff" in q for q in by)


def test_fact_is_a_frozen_dataclass():
    fact = Fact("Who?", "Ana", 1)
    with pytest.raises(AttributeError):
        fact.answer = "Bo"  # type: ignore[misc]


def test_pool_is_rendered_once_then_loaded_from_the_cache(tmp_path):
    spec = PoolSpec(documents=2, needles=2, fillers=1, cross_sets=1, max_pages=1)
    pool = build_pool(spec, tmp_path, tiers=("gist",), workers=1, log=lambda _: None)
    kinds = sorted(item.kind for item in pool.items)
    assert kinds == ["cross", "document", "document", "filler", "needle", "needle"]
    n = len(pool.texts)
    assert pool.tiers["gist"].shape == (n, 256, 256) and pool.tiers["gist"].dtype == np.uint8
    for item in pool.items:
        for _question, answer, page in item.facts:
            assert page == -1 or norm(answer) in norm(pool.texts[page])
    again = build_pool(spec, tmp_path, tiers=("gist",), workers=1, log=lambda _: 1 / 0)
    assert again.texts == pool.texts
    assert np.array_equal(again.tiers["gist"], pool.tiers["gist"])
    # the tier arrays are exactly what the backend would feed the encoder
    (needle,) = [i for i in pool.items if i.kind == "needle"][:1]
    page, _ = needle_page(needle.seed)
    expected = np.asarray(data.tier_image(page.image, "gist").convert("L"))
    assert np.array_equal(pool.tiers["gist"][needle.pages[0]], expected)
