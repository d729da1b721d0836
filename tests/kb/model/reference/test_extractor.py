"""The copy path's fine stage: windows, the weights file, spans read out of windows, and the
two-stage answer of the backend (with an untrained head: behaviour, not quality)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kb.embed import char_segments
from kb.model.base import NOT_FOUND, ContextPage
from kb.model.reference import extractor as fine
from kb.model.reference.backend import ReferenceBackend
from kb.model.reference.extractor import SpanExtractor, window

PAGE = (
    "Quarterly report\n\n"
    "Revenue in Q3 was 4.2 million euros. The Lisbon office employs 37 engineers.\n"
    "The board approved the new warehouse in Rotterdam. Audits happen every spring.\n"
)


@pytest.fixture(scope="module")
def reader() -> SpanExtractor:
    torch.manual_seed(0)
    model = SpanExtractor()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # an untrained head with opinions
    return model.eval()


@pytest.fixture(scope="module")
def saved(reader: SpanExtractor, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("extractor") / "extractor.safetensors"
    reader.save(path, {"step": "0"})
    return path


def test_a_window_is_the_title_and_the_segments_around_one_and_maps_back():
    bounds = char_segments(PAGE)
    assert [PAGE[a:b] for a, b in bounds][:2] == [
        "Quarterly report",
        "Revenue in Q3 was 4.2 million euros.",
    ]
    w = window(7, PAGE, bounds, 3)  # "The board approved ...": title, the one before, it, after
    assert w.page == 7
    assert w.text == (
        "Quarterly report\nThe Lisbon office employs 37 engineers.\n"
        "The board approved the new warehouse in Rotterdam. Audits happen every spring."
    )
    i = w.text.index("Rotterdam")
    a, b = w.to_page(i, i + len("Rotterdam"))
    assert PAGE[a:b] == "Rotterdam"
    a, b = w.to_page(0, len("Quarterly"))
    assert PAGE[a:b] == "Quarterly"
    first = window(0, PAGE, bounds, 0)  # the first segment has no title to add
    assert first.text.startswith("Quarterly report\n\nRevenue") and len(first.pieces) == 1


def test_spans_lie_inside_their_windows_and_are_deterministic(reader: SpanExtractor):
    windows = ["The Lisbon office employs 37 engineers.", "Audits happen every spring."]
    got = reader.extract("How many engineers work in Lisbon?", windows)
    assert [e.window for e in got] == [0, 1]
    for e in got:
        assert 0 <= e.start < e.end <= len(windows[e.window])
    again = reader.extract("How many engineers work in Lisbon?", windows)
    assert [(e.start, e.end, round(e.score, 4)) for e in again] == [
        (e.start, e.end, round(e.score, 4)) for e in got
    ]


def test_the_weights_file_round_trips_and_refuses_tampering(reader, saved, tmp_path):
    loaded = SpanExtractor(saved)
    assert loaded.metadata["step"] == "0" and loaded.metadata["format"] == fine.FORMAT
    window_text = ["The board approved the new warehouse in Rotterdam."]
    a = reader.extract("Where is the warehouse?", window_text)[0]
    b = loaded.extract("Where is the warehouse?", window_text)[0]
    assert (a.start, a.end) == (b.start, b.end) and abs(a.score - b.score) < 0.05  # fp16 file
    tampered = tmp_path / saved.name
    data = bytearray(saved.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    (tmp_path / (saved.name + ".sha256")).write_text(
        (saved.parent / (saved.name + ".sha256")).read_text()
    )
    with pytest.raises(RuntimeError, match="sha256"):
        SpanExtractor(tampered)


def test_a_file_says_how_many_top_layers_it_holds(saved, tmp_path):
    deeper = SpanExtractor()
    deeper.layers = 6  # a trainer asking for more layers than the file it starts from
    deeper.load(saved)
    assert deeper.layers == 6 and len(deeper.trained_names()) > len(deeper.trained_names(3))
    with torch.no_grad():
        deeper.encoder.encoder.layer[0].output.dense.bias.add_(0.5)  # a change below the top 3
    path = tmp_path / "six.safetensors"
    deeper.save(path, {"step": "1"})
    served = SpanExtractor(path)  # the service's default is 3: the file's 6 win
    assert served.layers == 6
    bias = served.encoder.encoder.layer[0].output.dense.bias
    assert torch.allclose(bias, deeper.encoder.encoder.layer[0].output.dense.bias, atol=1e-2)
    other = tmp_path / "other.safetensors"
    deeper.save(other, {})
    tensors = load_file(str(other))
    del tensors[next(k for k in tensors if k.startswith("encoder.encoder.layer.4."))]
    save_file(tensors, str(other), metadata={"format": fine.FORMAT})
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    (tmp_path / "other.safetensors.sha256").write_text(f"{digest}  other.safetensors\n")
    with pytest.raises(ValueError, match="trained part"):
        SpanExtractor(other)


def test_the_backend_copies_the_answer_from_the_best_window(config, reader):
    backend = ReferenceBackend(config=config, scorer=True, extractor=reader)
    other = "Minutes of the safety meeting.\nFire drills are held twice a year."
    pages = [
        ContextPage(d, 1, f"{d} p.1", "text", tensors=backend.encode_text([t])[0], text=t)
        for d, t in (("other", other), ("report", PAGE))
    ]
    reader.threshold = float("-inf")  # always answer: the span must come from a page
    try:
        answer = backend.answer("Where will the new warehouse be?", pages)
    finally:
        reader.threshold = 0.0
    assert answer.found and answer.text and len(answer.page_scores) == 2
    cited = max(range(2), key=lambda i: answer.page_scores[i])
    squashed = " ".join((pages[cited].text or "").split())
    assert answer.text in squashed
    reader.threshold = float("inf")  # never answer: "not found", nothing cited
    try:
        answer = backend.answer("Where will the new warehouse be?", pages)
    finally:
        reader.threshold = 0.0
    assert not answer.found and answer.text == NOT_FOUND


def test_the_shipped_extractor_is_checked_at_once_and_loaded_only_to_answer():
    backend = ReferenceBackend()  # the shipped weights: scorer and extractor on
    text = "The board approved the new warehouse in Rotterdam."
    page = ContextPage("n", 1, "n p.1", "text", tensors=backend.encode_text([text])[0], text=text)
    assert backend._extractor is None  # a worker encodes without loading it
    answer = backend.answer("Where is the new warehouse?", [page])
    assert backend._extractor is not None and answer.text == "Rotterdam"


def test_a_segment_is_scored_with_its_page_so_words_split_over_a_page_still_meet(config):
    """The meeting's date is in one page's heading and the task in a bullet below it; another
    page holds the same task at another meeting. Segment by segment the two bullets tie; with
    their pages' words (PAGE_LEXICAL_WEIGHT) the bullet of the page that names the date wins."""
    backend = ReferenceBackend(config=config, scorer=False, extractor=False)
    texts = {
        "may": "Logistics meeting, 27 April 2020\n\nAttendees: Rosa Ansari.\n\n"
        "Isabel Olsen to check the visitor log.\n",
        "june": "Logistics meeting, 3 June 2021\n\nAttendees: Luis Bennett.\n\n"
        "Hannah Marsh to check the visitor log.\n",
    }
    pages = [
        ContextPage(d, 1, f"{d} p.1", "text", tensors=backend.encode_text([t])[0], text=t)
        for d, t in texts.items()
    ]
    packed = backend.packed(pages)
    question = "Who was asked to check the visitor log at the logistics meeting of 27 April 2020?"
    scores = backend.segment_scores(question, packed)
    bullet = {
        pages[i].document_id: s
        for s, (i, k) in enumerate(packed.segment_at)
        if "visitor log" in (pages[i].text or "")[slice(*packed.page_segments[i][k])]
    }
    assert scores[bullet["may"]] > scores[bullet["june"]]
    assert packed.page_terms[0] >= {"27", "april", "2020", "visitor", "log"}
    assert packed.segment_page.tolist() == [i for i, _ in packed.segment_at]


MEMO = (
    "Memo: printer replacement\n\n"
    "The new printers arrive in March. Questions should be directed to Hannah Weber.\n\n"
    "From: Alice Fischer\n"
    "To: All marketing staff\n"
    "Date: 6 October 2019\n"
    "Subject: printer replacement\n\n"
    "The access code is 4410.\n"
)


def test_a_line_of_a_memo_header_has_the_whole_header_as_its_window():
    """Who sent the memo dated 6 October 2019? The date's line picks the memo, the sender is on
    the line two above; each line is a segment, so the window of either is the header."""
    bounds = char_segments(MEMO)
    lines = [MEMO[a:b] for a, b in bounds]
    header = (
        "From: Alice Fischer\nTo: All marketing staff\nDate: 6 October 2019\n"
        "Subject: printer replacement"
    )
    for line in ("From: Alice Fischer", "Date: 6 October 2019", "Subject: printer replacement"):
        w = window(0, MEMO, bounds, lines.index(line))
        assert w.text == "Memo: printer replacement\n" + header
        i = w.text.index("Alice")
        a, b = w.to_page(i, i + len("Alice Fischer"))
        assert MEMO[a:b] == "Alice Fischer"
    # A sentence keeps its usual window; the title (one field line on its own) too.
    body = lines.index("The access code is 4410.")
    assert window(0, MEMO, bounds, body).text == (
        "Memo: printer replacement\nSubject: printer replacement\n\nThe access code is 4410."
    )
    assert window(0, MEMO, bounds, 0).text.startswith("Memo: printer replacement\n\nThe new")


def test_stage_one_reads_each_window_once_the_best_page_too_and_one_page_when_asked(config):
    backend = ReferenceBackend(config=config, scorer=False, extractor=False)
    others = [
        f"Memo: printer replacement\n\nQuestions should be directed to Person {k}.\n\n"
        f"From: Someone {k}\nDate: {k + 1} May 2018\nSubject: printer replacement\n"
        for k in range(30)
    ]
    texts = others + [MEMO]
    pages = [
        ContextPage(f"d{i}", 1, f"d{i} p.1", "text", tensors=backend.encode_text([t])[0], text=t)
        for i, t in enumerate(texts)
    ]
    packed = backend.packed(pages)
    question = "Who sent the memo about the printer replacement dated 6 October 2019?"
    windows = backend.reading_windows(question, pages, packed, top=2)
    keys = [(w.page, w.text) for w in windows]
    assert len(keys) == len(set(keys))  # a header's lines share one window, read once
    memo = len(texts) - 1
    assert any(w.page == memo and "Alice Fischer" in w.text for w in windows)
    # The question's numbers name the memo's page alone: no other page is read (identifiers).
    assert {w.page for w in windows} == {memo}
    question = "Who sent the memo about the printer replacement to all marketing staff?"
    windows = backend.reading_windows(question, pages, packed, top=2)
    assert len(windows) > 2  # the two best, and the best page's best windows beside them
    assert any(w.page == memo and "Alice Fischer" in w.text for w in windows)
    only = backend.reading_windows(question, pages, packed, only=3)
    assert only and {w.page for w in only} == {3}


def test_among_windows_that_answer_the_page_that_matches_the_question_weighs_in(
    config, reader, monkeypatch
):
    """PAGE_PRIOR: the reader's score plus a share of its page's (the question's rare words the
    page holds). With a large weight the page that names the question's sender is chosen,
    whatever the reader's scores (reversed, the other one); with none, the reader's best alone."""
    from kb.model.reference import backend as reference_backend

    backend = ReferenceBackend(config=config, scorer=False, extractor=reader)
    texts = [
        f"Memo: parking\n\nQuestions should be directed to {contact}.\n\nFrom: {sender}\n"
        for sender, contact in (("Carlos Diaz", "Isabel Strand"), ("Emma Fischer", "Nadia Petrova"))
    ]
    pages = [
        ContextPage(f"m{i}", 1, f"m{i} p.1", "text", tensors=backend.encode_text([t])[0], text=t)
        for i, t in enumerate(texts)
    ]
    question = "Who should questions about Carlos Diaz's parking memo go to?"
    reader.threshold = float("-inf")  # every window answers: only the choice among them counts
    try:
        monkeypatch.setattr(reference_backend, "PAGE_PRIOR", 1e6)
        prior = backend.answer(question, pages)
        monkeypatch.setattr(reference_backend, "PAGE_PRIOR", -1e6)  # the mechanism, reversed
        reverse = backend.answer(question, pages)
        monkeypatch.setattr(reference_backend, "PAGE_PRIOR", 0.0)
        plain = backend.answer(question, pages)
        got = reader.extract(question, [w.text for w in backend.reading_windows(
            question, pages, backend.packed(pages))])  # fmt: skip
    finally:
        reader.threshold = 0.0
    assert max(range(2), key=lambda i: prior.page_scores[i]) == 0  # Carlos Diaz's memo
    assert prior.text in " ".join(texts[0].split())
    assert max(range(2), key=lambda i: reverse.page_scores[i]) == 1
    assert plain.score == max(e.score for e in got)  # no prior: the reader's best
