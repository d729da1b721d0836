"""kb.embed: page segments as UTF-8 byte offsets, and the offline all-MiniLM-L6-v2 embedder."""

from __future__ import annotations

import pytest
import torch

from kb.embed import EMBED_DIM, MAX_SEGMENT, SentenceEmbedder, segments

PAGE = (
    "Annual Report — Zürich\n"
    "\n"
    "1. Offices\n"
    "The Lisbon office employs 37 engineers. Is it growing? Yes!\n"
    "- Lisbon: 37 engineers\n"
    "- Porto: 12 engineers\n"
    "| Quarter | Revenue |\n"
    "| Q3      | 4.2 M€  |\n"
    "\n"
    "2. Outlook\n" + "the team keeps hiring across all sites " * 20 + "\n"
)


def texts(text: str) -> list[str]:
    data = text.encode("utf-8")
    return [data[a:b].decode("utf-8") for a, b in segments(text)]


def test_segments_are_byte_offsets_of_trimmed_text_in_order() -> None:
    spans = segments(PAGE)
    data = PAGE.encode("utf-8")
    assert spans
    for (a, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert a < b <= c
    for a, b in spans:
        piece = data[a:b].decode("utf-8")  # offsets fall on character boundaries
        assert piece == piece.strip() and piece
    # Non-ASCII before a segment shifts byte offsets away from character offsets.
    assert spans[1][0] != PAGE.index("1. Offices")
    # Nothing but whitespace is left out.
    assert "".join(PAGE.split()) == "".join("".join(t.split()) for t in texts(PAGE))


def test_segments_split_headings_sentences_lists_and_table_rows() -> None:
    got = texts(PAGE)
    assert got[:10] == [
        "Annual Report — Zürich",
        "1. Offices",
        "The Lisbon office employs 37 engineers.",
        "Is it growing?",
        "Yes!",
        "- Lisbon: 37 engineers",
        "- Porto: 12 engineers",
        "| Quarter | Revenue |",
        "| Q3      | 4.2 M€  |",
        "2. Outlook",
    ]


def test_long_paragraph_is_cut_on_whitespace() -> None:
    got = texts(PAGE)
    tail = got[10:]
    assert len(tail) >= 2
    assert all(len(t) <= MAX_SEGMENT for t in tail)
    assert " ".join(tail).split() == ("the team keeps hiring across all sites " * 20).split()


def test_wrapped_sentence_stays_one_segment() -> None:
    text = (
        "    This sentence is wrapped over two lines by the layout, as\n"
        "    the text tier pages are.  A second one follows.\n"
    )
    assert texts(text) == [
        "This sentence is wrapped over two lines by the layout, as\n    the text tier pages are.",
        "A second one follows.",
    ]


def test_segments_of_empty_or_blank_text() -> None:
    assert segments("") == []
    assert segments(" \n\n\t ") == []


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    torch.set_num_threads(1)
    return SentenceEmbedder()


def test_embeddings_are_unit_vectors(embedder: SentenceEmbedder) -> None:
    vectors = embedder.embed(["one", "two words", "a somewhat longer sentence here."], batch_size=2)
    assert vectors.shape == (3, EMBED_DIM) and vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    assert embedder.embed([]).shape == (0, EMBED_DIM)


def test_question_scores_its_answer_higher(embedder: SentenceEmbedder) -> None:
    q, right, wrong = embedder.embed(
        [
            "How many engineers work in Lisbon?",
            "The Lisbon office employs 37 engineers.",
            "Revenue in Q3 was 4.2 million euros.",
        ]
    )
    assert float(q @ right) > float(q @ wrong) + 0.2


def test_batching_and_order_do_not_change_vectors(embedder: SentenceEmbedder) -> None:
    sentences = ["short", "a much longer sentence than the first one", "mid length one"]
    one_batch = embedder.embed(sentences)
    singles = torch.cat([embedder.embed([s]) for s in sentences])
    assert torch.allclose(one_batch, singles, atol=1e-5)


def test_identifiers_are_the_question_codes_and_numbers():
    from kb.embed import identifier_key, identifiers

    q = "How many lamps are billed on invoice INV-53350 for flight LH3304 in 2020, version 3.8?"
    assert identifiers(q) == ["2020", "53350", "lh3304"]
    assert identifiers("What does the -z option do?") == []  # no digit: nothing to check
    assert identifiers("On 22 May, 4 GB, v2.0, non-7-bit-safe") == []  # too short to tell
    assert identifiers("mke2fs/tune2fs on /dev/sda1") == ["mke2fs", "sda1", "tune2fs"]
    assert identifier_key("Invoice INV 53350, 4 GB") == "invoiceinv533504gb"


def test_read_back_words_stand_for_the_question_words_they_misread():
    from kb.embed import correct_read, read_as

    question = "When is the kickoff meeting for the Yucca project?"
    stands = read_as(question, ["hikoff", "meeting", "proect", "yica", "budget", "sef"])
    # within READ_SIMILARITY of a question word of READ_MIN_LENGTH or more; others are not
    assert stands == {"hikoff": "kickoff", "meeting": "meeting", "proect": "project"}
    assert read_as("Who is it?", ["who"]) == {}  # no content word of four letters
    read = "The Hikoff meeting for the Yica PROECT is sef for Movember 26, 2019."
    assert correct_read(question, read) == (
        "The kickoff meeting for the Yica project is sef for Movember 26, 2019."
    )
    assert correct_read("What is the budget?", read) == read  # nothing it names is misread
