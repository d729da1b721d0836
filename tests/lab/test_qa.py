"""lab.qa: the questions people wrote over real documents, the reader's training set."""

from __future__ import annotations

import random

from lab import qa
from lab import train_extractor as T
from lab.natural import check
from lab.realtext import shingles


def test_the_training_set_passes_its_checker_and_never_repeats_the_evaluation_documents():
    assert check.main([str(qa.HERE)]) == 0
    unseen = set().union(*(shingles(p.read_text()) for p in check.DOCS.glob("*.txt")))
    for path in (qa.HERE / "docs").glob("*.txt"):
        assert not shingles(path.read_text()) & unseen, path.name


def test_every_question_is_located_and_the_splits_share_no_document_or_text():
    train, held = qa.documents("train"), qa.documents("heldout")
    assert len(train) >= 4 * len(held) > 0
    asked = sum(len(d.questions) for d in train + held)
    assert asked == len(check.load_questions(qa.HERE))  # none lost to a span not found
    held_runs = set().union(*(shingles("\n".join(d.pages)) for d in held))
    for d in train:
        assert len(shingles("\n".join(d.pages)) & held_runs) <= qa.SHARED_RUNS, d.name
    for d in train + held:
        for q in d.questions:
            if q.answer is None:
                assert q.page is None and q.span is None
            else:
                assert q.page is not None and q.span is not None
                a, b = q.span
                assert d.pages[q.page][a:b].split() == q.answer.split()


def test_locate_follows_wrapped_lines_and_picks_the_occurrence_in_its_context():
    page = "Use -b to set it.\nThe batch file is read with -b\n  batchfile, one command a line."
    assert qa.locate(page, "-b batchfile", None) == (page.index("-b\n"), page.index(", one"))
    first = qa.locate(page, "-b", None)
    assert first == (4, 6)
    a, b = qa.locate(page, "-b", "read with -b") or (0, 0)
    assert (a, b) != first and page[a:b] == "-b"
    assert qa.locate(page, "-q", None) is None
    assert qa.locate(page, "-b", "not on the page") is None


def test_documents_that_repeat_each_other_fall_in_one_group():
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = " ".join(a + b + c for a in letters[:6] for b in letters[:6] for c in letters[:6])
    texts = {"b.txt": words, "c.txt": "alpha " + words, "a.txt": "nothing shared here at all"}
    assert qa.groups(texts) == {"a.txt": "a.txt", "b.txt": "b.txt", "c.txt": "b.txt"}


def test_people_questions_reach_the_reader_with_their_answer_in_the_window():
    cfg = {**T.DEFAULTS, "people": 1.0, "questions": 8, "negatives": 4}
    batch = T.examples(random.Random(1), "train", cfg)
    positives = [(q, w, s) for q, w, s in batch if s is not None]
    assert len(positives) == 8 and len(batch) == 12
    known = {q.question: q.answer for d in qa.documents("train") for q in d.questions}
    for question, window, (a, b) in positives:
        assert window[a:b].split() == (known[question] or "").split()


def test_the_threshold_is_calibrated_on_questions_the_eval_does_not_read():
    """qa.calibrates splits the held-out questions: the calibration reads a third of them,
    make eval's people section and the trainer's curve only the rest."""
    held = [q for d in qa.documents("heldout") for q in d.questions]
    calibrating = {q.question for q in held if qa.calibrates(q.question)}
    measured = {q.question for q in held if not qa.calibrates(q.question)}
    assert calibrating and measured and not calibrating & measured
    assert 0.25 < len(calibrating) / len(held) < 0.42
    assert any(q.answer is None for q in held if q.question in measured)  # both kinds measured
