"""Questions written by people over real documents: the reader's training set beside the
generated ones (lab.textdata's templates, lab.realtext's cloze questions).

``lab/qa/docs/`` holds real documents that ship on a Debian machine (licences, user and
configuration manuals, file-format specifications, READMEs and FAQs; SOURCES*.md say where each
came from and under which licence), ``questions*.json`` the questions people wrote over them, in
lab/natural's format: the answer a verbatim span of its page, or null when the document does not
say (SQuAD 2.0's unanswerable questions), checked by ``python -m lab.natural.check lab/qa``. No
document shares an 8-word run with lab/natural's, the evaluation set, which is never trained on.

About one document in five is held out: a third of its questions (``calibrates``) calibrate the
"no answer" threshold, the others give the trainer's ``people`` curve and make eval's people
section; the other documents' are trained on. Documents that repeat
each other (scp and sftp share their option list) are held out or trained on together: the
split is by the hash of the first name in each group of documents sharing more than
``SHARED_RUNS`` 8-word runs; a document that shares more than that with the held-out documents
together (man pages of one suite repeat boilerplate a few runs at a time) is held out too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Asked:
    question: str
    answer: str | None  # as written (None: the document does not say)
    page: int | None  # index into the document's pages
    span: tuple[int, int] | None  # char span of the answer in that page's text


@dataclass(frozen=True)
class Document:
    name: str
    pages: tuple[str, ...]  # each page's text as ingest reads it back
    questions: tuple[Asked, ...]


SHARED_RUNS = 50


def held_out(name: str) -> bool:
    return hashlib.sha256(name.encode()).digest()[0] < 52  # about one in five


def calibrates(question: str) -> bool:
    """About one held-out question in three calibrates the "no answer" threshold
    (lab.train_extractor); the trainer's people curve and make eval's people section read only
    the others, so the threshold is never chosen on the questions it is measured on."""
    return hashlib.sha256(question.encode()).digest()[0] < 86


def groups(texts: dict[str, str]) -> dict[str, str]:
    """Each document's group: the first name (sorted) of the documents it shares more than
    SHARED_RUNS 8-word runs with, directly or through others."""
    from lab.realtext import shingles

    names = sorted(texts)
    runs = {n: shingles(texts[n]) for n in names}
    root = {n: n for n in names}

    def find(n: str) -> str:
        while root[n] != n:
            n = root[n]
        return n

    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if len(runs[a] & runs[b]) > SHARED_RUNS:
                ra, rb = sorted((find(a), find(b)))
                root[rb] = ra
    return {n: find(n) for n in names}


def held_out_names(texts: dict[str, str]) -> set[str]:
    """The held-out documents: each group's by the hash of its first name, then, until none is
    left, every other document that shares more than SHARED_RUNS 8-word runs with them all."""
    from lab.realtext import shingles

    group = groups(texts)
    held = {n for n in texts if held_out(group[n])}
    runs = {n: shingles(t) for n, t in texts.items()}
    while True:
        held_runs = set().union(*(runs[n] for n in held))
        more = {n for n in texts if n not in held and len(runs[n] & held_runs) > SHARED_RUNS}
        if not more:
            return held
        held |= more


def _pattern(text: str) -> str:
    return r"\s+".join(re.escape(w) for w in text.split())


def locate(page: str, answer: str, context: str | None) -> tuple[int, int] | None:
    """The answer's char span in a page's text (the layout may wrap it: any whitespace between
    its words), inside ``context`` when given."""
    lo, hi = 0, len(page)
    if context:
        m = re.search(_pattern(context), page)
        if m is None:
            return None
        lo, hi = m.span()
    m = re.compile(_pattern(answer)).search(page, lo, hi)
    return m.span() if m else None


@cache
def documents(split: str = "train") -> tuple[Document, ...]:
    """The documents of one split ("train" or "heldout") with their questions; a question whose
    span is not found on its page (lab.natural.check would fail it) is left out."""
    from lab.natural.check import load_questions, page_texts

    by_doc: dict[str, list[dict]] = {}
    for q in load_questions(HERE):
        by_doc.setdefault(q["doc"], []).append(q)
    paths = {p.name: p for p in sorted((HERE / "docs").glob("*.txt"))}
    held = held_out_names({n: p.read_text(encoding="utf-8") for n, p in paths.items()})
    out = []
    for name in sorted(by_doc):
        path = paths.get(name)
        if path is None or (name in held) != (split == "heldout"):
            continue
        pages = tuple(page_texts(path))
        asked = []
        for q in by_doc[name]:
            if q["answer"] is None:
                asked.append(Asked(q["question"], None, None, None))
                continue
            page = q["page"] - 1
            if not 0 <= page < len(pages):
                continue
            span = locate(pages[page], q["answer"], q.get("context"))
            if span is not None:
                asked.append(Asked(q["question"], q["answer"], page, span))
        out.append(Document(name, pages, tuple(asked)))
    return tuple(out)
