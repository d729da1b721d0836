"""The shipped weights, pinned: a page read back right from the text tier (and as far as it goes
from the base tier, a real PDF's page too), a needle answered right among text-tier pages and
among base-tier pages with its page cited first, an absent answer said to be absent, and the
README's walk-through question answered. Retraining may change these on purpose: update them with
the weights (the version check below says which weights they belong to)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from ingest import render_pdf_bytes, tier_image
from kb.model import load_backend
from kb.model.base import NOT_FOUND, ContextPage
from kb.model.reference.backend import DEFAULT_WEIGHTS, ReferenceBackend
from kb.settings import Settings
from lab import data, textdata
from lab.metrics import cited_first, precision

PINNED_VERSION = "reference-4ce2bc18f6d0"
PINNED_EXTRACTOR = "83aacca089b8"  # kb/model/reference/weights/extractor.safetensors


@pytest.fixture(scope="module")
def backend() -> ReferenceBackend:
    torch.set_num_threads(1)  # one thread: the same arithmetic on every machine of this kind
    assert DEFAULT_WEIGHTS.is_file(), "the shipped weights are part of the repository"
    b = ReferenceBackend()
    assert b.trained and b.version == PINNED_VERSION, (b.version, "update the pinned cases")
    assert b.config.span_head and b.scorer is not None
    assert b.extractor is not None, "the copy path's fine stage ships beside the weights"
    assert b.extractor.metadata["sha256"][:12] == PINNED_EXTRACTOR, "update the pinned cases"
    return b


def text_page(backend: ReferenceBackend, text: str, doc: str = "doc", n: int = 1) -> ContextPage:
    (tensors,) = backend.encode_text([text])
    return ContextPage(doc, n, f"{doc} p.{n}", "text", tensors=tensors, text=text)


def test_a_page_is_read_back_right_from_the_text_tier(backend: ReferenceBackend) -> None:
    """A held-out page read back through the service's path (read_page: the read pointer over
    the page's text bytes), byte for byte, its first 400 bytes: names, codes and amounts too
    (at byte 410 the generator writes "Schedas" for the held-out name "Schmidt": see
    docs/benchmarks.md, the read pointer)."""
    text = textdata.make_page(random.Random(0), "heldout").text
    page = text_page(backend, text)
    assert text.startswith("Expense claim\n\n") and len(text.encode()) > 400
    assert backend.read_page(page, 400) == text.encode()[:400].decode("utf-8", "replace")


def test_a_page_is_read_back_from_the_base_tier(backend: ReferenceBackend) -> None:
    """A held-out page rendered and downscaled as ingest does, encoded at base, and read back
    from its 256 tokens through the service's path (read_page: the cell reader, issue 9). Not
    yet right: 88% of its characters ("Mem expens guuidelines From Sefan Nvak"; the eval's
    mean is in docs/benchmarks.md); pinned so that a change that loses the optical read-back
    shows."""
    page = data.make_document(1, "heldout", max_pages=1).pages[0]
    (tensors,) = backend.encode([tier_image(page.image, "base")], "base")
    read = backend.read_page(ContextPage("d", 1, "d p.1", "base", tensors=tensors), 4096)
    assert page.text.startswith("Memo: expense guidelines\nFrom: Stefan Novak")
    assert read.startswith("Mem") and "From Sefan" in read and "To: All" in read
    assert precision(read, page.text) >= 0.85
    other = data.make_document(2, "heldout", max_pages=1).pages[0]
    (tensors,) = backend.encode([tier_image(other.image, "base")], "base")
    assert backend.read_page(ContextPage("d", 2, "d p.2", "base", tensors=tensors), 4096) != read


def test_a_real_pdf_page_is_read_back_from_the_base_tier(backend: ReferenceBackend) -> None:
    """The first page of a real PDF the project did not write (lab/realpdf: the freedesktop.org
    shared MIME-info spec, typeset by pdfTeX), rendered as an upload is, read back at base: 62%
    of its text layer's characters ("Tatigr ... Thomas Lieomard" for "Thomas Leonard"), the
    author's first name right; pinned so that a change that loses real documents shows."""
    path = Path(__file__).parents[4] / "lab" / "realpdf" / "shared-mime-info-spec.pdf"
    page = render_pdf_bytes(path.read_bytes())[0]
    assert page.text.startswith("Shared MIME-info Database\nX Desktop Group")
    (tensors,) = backend.encode([tier_image(page.image, "base")], "base")
    read = backend.read_page(ContextPage("spec", 1, "spec p.1", "base", tensors=tensors), 4096)
    assert "Thomas" in read and precision(read, page.text) >= 0.55


def test_a_needle_is_answered_from_the_text_tier_and_its_page_cited(
    backend: ReferenceBackend,
) -> None:
    # A held-out needle among 10 pages, answered right with its page cited first (the eval's
    # rate is in docs/benchmarks.md); pinned so a change of weights or code that loses it shows.
    rng = random.Random(3)
    sample = textdata.ask_sample(rng, "heldout", 10, p_absent=0.0, max_bytes=2500)
    assert sample.answer == "$152,233"
    pages = [text_page(backend, t, f"d{i}") for i, t in enumerate(sample.pages)]
    answer = backend.answer(sample.question, pages)
    assert answer.found and answer.text == sample.answer, (sample.question, answer.text)
    assert max(range(len(pages)), key=lambda i: answer.page_scores[i]) == sample.page


def test_a_needle_is_answered_from_the_base_tier_and_its_page_cited(
    backend: ReferenceBackend,
) -> None:
    """Issue 9: held-out needles among 9 held-out filler pages, every page encoded at base and
    answered from what the cell reader reads back. Two the shipped weights answer right, their
    pages cited first; most base needles are still answered a character or two off ("197 k"
    for "187 kg": the eval's rates are in docs/benchmarks.md). A needle's question over the
    fillers alone is not answered."""
    fillers = [data.filler_page(seed, "heldout") for seed in range(9)]
    encoded = backend.encode([tier_image(p.image, "base") for p in fillers], "base")
    haystack = [
        ContextPage(f"f{i}", 1, f"f{i} p.1", "base", tensors=t) for i, t in enumerate(encoded)
    ]
    for seed, at, answer_text in ((18, 8, "Toronto"), (5, 5, "340 kg")):
        page, fact = data.needle_page(seed, "heldout")
        assert fact.answer == answer_text
        (tensors,) = backend.encode([tier_image(page.image, "base")], "base")
        needle = ContextPage("needle", 1, "needle p.1", "base", tensors=tensors)
        pages = haystack[:at] + [needle] + haystack[at:]
        answer = backend.answer(fact.question, pages)
        assert answer.found and answer.text == answer_text, (fact.question, answer.text)
        assert cited_first(answer.page_scores) == at
        assert not backend.answer(fact.question, haystack).found


def test_an_absent_answer_is_said_to_be_absent(backend: ReferenceBackend) -> None:
    pages = [
        text_page(backend, "Revenue in Q3 was 4.2 million euros.", "r"),
        text_page(backend, "The Lisbon office employs 37 engineers.", "r", 2),
    ]
    answer = backend.answer("Who signed the lease for the Osaka warehouse?", pages)
    assert not answer.found and answer.text == NOT_FOUND


def test_a_code_no_page_names_is_not_answered_from_a_page_like_it(
    backend: ReferenceBackend,
) -> None:
    """Two invoices in memory, a question about a third: without the identifier step the reader
    copies a quantity from an invoice that looks right; with it, no page names INV-55318, so
    the memory does not hold the answer. Asked about an invoice that is there, it reads that
    one and cites it."""
    pages = [
        text_page(backend, "Invoice INV-10009\n\nDesk lamps: 55\nChairs: 12\n", "a"),
        text_page(backend, "Invoice INV-53350\n\nDesk lamps: 340\nChairs: 9\n", "b"),
    ]
    absent = backend.answer("How many desk lamps are billed on invoice INV-55318?", pages)
    assert not absent.found and absent.page_scores == [0.0, 0.0]
    there = backend.answer("How many desk lamps are billed on invoice INV-53350?", pages)
    assert there.found and there.text == "340" and there.page_scores[1] > there.page_scores[0]
    blind = ReferenceBackend(identifiers=False)
    blind._extractor = backend.extractor  # the same reader, without the identifier step
    assert blind.answer("How many desk lamps are billed on invoice INV-55318?", pages).found


def test_the_readme_walk_through(backend: ReferenceBackend) -> None:
    pages = [
        text_page(backend, "Revenue in Q3 was 4.2 million euros.", "report"),
        text_page(backend, "The Lisbon office employs 37 engineers.", "report", 2),
        text_page(backend, "The board approved the new warehouse in Rotterdam.\n", "note"),
    ]
    answers = {}
    for question in PINNED_WALK_THROUGH:
        answer = backend.answer(question, pages)
        top = max(range(3), key=lambda i: answer.page_scores[i])
        answers[question] = (answer.text, pages[top].label if answer.found else None)
    assert answers == PINNED_WALK_THROUGH


def test_a_stricter_answer_threshold_is_a_setting(backend: ReferenceBackend) -> None:
    """KB_ANSWER_THRESHOLD reaches the reader: at 6.29 (docs/benchmarks.md) the revenue
    question the calibrated threshold answers is said not found."""
    strict = load_backend("reference", answer_threshold=6.29)
    assert isinstance(strict, ReferenceBackend)
    pages = [text_page(strict, "Revenue in Q3 was 4.2 million euros.", "report")]
    assert backend.answer("What was the revenue in Q3?", pages).found
    assert not strict.answer("What was the revenue in Q3?", pages).found
    assert strict.extractor is not None and strict.extractor.threshold == 6.29
    assert Settings(answer_threshold=6.29).answer_threshold == 6.29


def test_questions_across_pages_are_answered_from_each_page_s_fact(backend: ReferenceBackend):
    """The symbolic step (kb.aggregate) with the shipped reader copying each office's figure
    from its own page, among pages about other things; a comparison whose office no page names
    falls back to the reader, which finds nothing."""
    offices = {
        "Ghent": "Acme: Ghent office, annual summary\nThe Ghent office has 106 staff and is "
        "managed by Rosa Ansari. It opened in 1999 and had revenue of EUR 1,936,000 last year.\n",
        "Porto": "Acme: Porto office, annual summary\nStaff: 379\nManager: Henrik Fischer\n"
        "Opened: 1990\nRevenue last year: EUR 6,598,000\n",
        "Lyon": "Acme: Lyon office, annual summary\nThe Lyon office has 237 staff and is "
        "managed by Joao Berg. It opened in 1972 and had revenue of EUR 8,544,000 last year.\n",
    }
    pages = [text_page(backend, t, city) for city, t in offices.items()]
    pages.insert(1, text_page(backend, "Minutes of the safety meeting. Fire drills are held "
                              "twice a year in the Lisbon office.\n", "minutes"))  # fmt: skip
    expected = {
        "Which Acme office has the most staff?": ("Porto", "Porto p.1"),
        "Which Acme office has the fewest staff?": ("Ghent", "Ghent p.1"),
        "Which Acme office had the highest revenue last year?": ("Lyon", "Lyon p.1"),
        "Which Acme office has more staff, Ghent or Lyon?": ("Lyon", "Lyon p.1"),
        "How many Acme offices have more than 200 staff?": ("2", "Porto p.1"),
        "What is the combined staff of the Acme offices in Ghent and Lyon?": ("343", "Ghent p.1"),
        "How many offices does Acme have?": ("3", "Ghent p.1"),
    }
    for question, (text, cited) in expected.items():
        answer = backend.answer(question, pages)
        top = max(range(len(pages)), key=lambda i: answer.page_scores[i])
        assert (answer.text, pages[top].label) == (text, cited), question
        assert answer.page_scores[1] == 0.0  # the minutes are about no Acme office
    answer = backend.answer("Which Acme office has more staff, Ghent or Berlin?", pages)
    assert answer.text != "Ghent"  # Berlin's staff is on no page: no comparison is made up


# The README's pages and questions: every answer found on its page, the absent one said to be
# absent.
PINNED_WALK_THROUGH: dict[str, tuple[str, str | None]] = {
    "How many engineers work in Lisbon?": ("37", "report p.2"),
    "What was the revenue in Q3?": ("4.2 million euros", "report p.1"),
    "Where will the new warehouse be?": ("Rotterdam", "note p.1"),
    "Who signed the lease?": ("Not found in the collection.", None),
}
