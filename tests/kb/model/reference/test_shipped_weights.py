"""The shipped weights, pinned: a page read back right from the text tier, a needle answered right
among text-tier pages with its page cited first, an absent answer said to be absent, and the
README's walk-through question answered. Retraining may change these on purpose: update them with
the weights (the version check below says which weights they belong to)."""

from __future__ import annotations

import random

import pytest
import torch

from kb.model.base import NOT_FOUND, ContextPage
from kb.model.reference.backend import DEFAULT_WEIGHTS, ReferenceBackend
from kb.model.reference.processing_reference import decode, read_prompt
from lab import textdata

PINNED_VERSION = "reference-PENDING"


@pytest.fixture(scope="module")
def backend() -> ReferenceBackend:
    torch.set_num_threads(1)  # one thread: the same arithmetic on every machine of this kind
    assert DEFAULT_WEIGHTS.is_file(), "the shipped weights are part of the repository"
    b = ReferenceBackend()
    assert b.trained and b.version == PINNED_VERSION, (b.version, "update the pinned cases")
    assert b.config.span_head and b.scorer is not None
    return b


def text_page(backend: ReferenceBackend, text: str, doc: str = "doc", n: int = 1) -> ContextPage:
    (tensors,) = backend.encode_text([text])
    return ContextPage(doc, n, f"{doc} p.{n}", "text", tensors=tensors, text=text)


def test_a_page_is_read_back_right_from_the_text_tier(backend: ReferenceBackend) -> None:
    text = textdata.make_page(random.Random(PINNED_READ_SEED), "heldout").text
    page = text_page(backend, text)
    ids, _ = backend.model.generate(read_prompt(), backend.model.pack([backend.page_kv(page)]), 128)
    assert decode(ids) == text.encode()[:128].decode("utf-8", "ignore")


def test_a_needle_is_answered_from_the_text_tier_and_its_page_cited(
    backend: ReferenceBackend,
) -> None:
    rng = random.Random(PINNED_NEEDLE_SEED)
    sample = textdata.ask_sample(rng, "heldout", 10, p_absent=0.0, max_bytes=2500)
    pages = [text_page(backend, t, f"d{i}") for i, t in enumerate(sample.pages)]
    answer = backend.answer(sample.question, pages)
    assert answer.found and answer.text == sample.answer, (sample.question, answer.text)
    assert max(range(len(pages)), key=lambda i: answer.page_scores[i]) == sample.page


def test_an_absent_answer_is_said_to_be_absent(backend: ReferenceBackend) -> None:
    pages = [
        text_page(backend, "Revenue in Q3 was 4.2 million euros.", "r"),
        text_page(backend, "The Lisbon office employs 37 engineers.", "r", 2),
    ]
    answer = backend.answer("Who signed the lease for the Osaka warehouse?", pages)
    assert not answer.found and answer.text == NOT_FOUND


def test_the_readme_walk_through_question(backend: ReferenceBackend) -> None:
    pages = [
        text_page(backend, "Revenue in Q3 was 4.2 million euros.", "report"),
        text_page(backend, "The Lisbon office employs 37 engineers.", "report", 2),
        text_page(backend, "The board approved the new warehouse in Rotterdam.\n", "note"),
    ]
    answer = backend.answer("How many engineers work in Lisbon?", pages)
    assert answer.found and answer.text == "37"
    assert max(range(3), key=lambda i: answer.page_scores[i]) == 1


PINNED_READ_SEED = 0
PINNED_NEEDLE_SEED = 0
