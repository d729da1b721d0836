"""The shipped weights, pinned: the read-back of a fixed rendered page and the answer to a fixed
needle question. Retraining changes these strings on purpose: update them with the weights (the
version check below says which weights they belong to)."""

from __future__ import annotations

import pytest
import torch

from ingest import tier_image
from kb.model.base import ContextPage
from kb.model.reference.backend import DEFAULT_WEIGHTS, ReferenceBackend
from lab.data import filler_page, needle_page

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no shipped weights")

PINNED_VERSION = "reference-9312fcd4b47a"


@pytest.fixture(scope="module")
def backend() -> ReferenceBackend:
    torch.set_num_threads(1)  # one thread: the same arithmetic on every machine of this kind
    b = ReferenceBackend()
    assert b.trained and b.version == PINNED_VERSION, (b.version, "update the pinned strings")
    return b


def page_of(backend: ReferenceBackend, image, tier: str) -> ContextPage:  # type: ignore[no-untyped-def]
    (tensors,) = backend.encode([tier_image(image, tier)], tier)
    return ContextPage("doc", 1, "doc p.1", tier, tensors=tensors)


def test_read_back_of_a_fixed_page_is_pinned(backend: ReferenceBackend) -> None:
    page = needle_page(7, "heldout")[0]
    text = backend.read_page(page_of(backend, page.image, "tiny"), max_new_tokens=64)
    assert text == PINNED_READ_BACK


def test_answer_to_a_fixed_needle_question_is_pinned(backend: ReferenceBackend) -> None:
    needle, fact = needle_page(11, "heldout")
    images = [filler_page(s, "heldout").image for s in (1, 2, 3)] + [needle.image]
    pages = [page_of(backend, im, "tiny") for im in images]
    answer = backend.answer(fact.question, pages, max_new_tokens=32)
    assert (fact.question, answer.text) == PINNED_NEEDLE
    assert len(answer.page_scores) == 4 and all(s >= 0 for s in answer.page_scores)


# What the CPU-trained weights produce today (85 minutes on two cores): the read-back opens the
# way memos and reports open and then loses the words (the page says "Summary\nUpdates\nCosts
# related to the safety training..."), and the needle answer is a date, of the right kind but
# not this page's (the fact is March 24, 2026). docs/benchmarks.md has the measured figures.
PINNED_READ_BACK = "Memo: shoponstion shomenterement summary\ns\ufffdecurus arendion Dande"
PINNED_NEEDLE = ("When is the kickoff meeting for the Lodestar project?", "2020-01-21")
