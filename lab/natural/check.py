"""Check lab/natural/questions.json against the documents in lab/natural/docs/.

Each document is laid out into pages exactly as a .txt upload is (ingest.open_document: the
text becomes one wrapped <pre>, laid out on A4 pages by ingest.layout), and each page's text is
read back with the same flags ingest.render.render_page uses for RenderedPage.text (the page
images are not rendered: only the text is needed). For every question this checks:

- its fields: doc, question, answer, page, kind ("licence" | "manual" | "spec");
- its doc exists, and an answered question's page is within the document;
- the answer occurs in the text of that page, after collapsing runs of whitespace to one space
  on both sides (the layout wraps long lines);
- an unanswered question (absent answer) has "answer": null and "page": null;
- each of its other accepted answers (optional ``accept``, a list: the shorter spans a reader
  would also take, as SQuAD keeps several annotators' answers) occurs on that page too.

It also notes, without failing, answers that occur on more than one page of their document.
Prints each failure and a summary; exits 1 if anything failed.

    python -m lab.natural.check             # the evaluation set, lab/natural
    python -m lab.natural.check lab/qa      # the training set written by people, lab/qa

Another directory (``lab/qa``, the reader's training questions) has the same layout, its
questions in every ``questions*.json`` there, and two more rules, so that it can be trained on
while lab/natural stays unseen: no document shares an 8-word run with a lab/natural document,
and an answer found more than once on its page carries a ``context``: a longer excerpt of the
page, found on it once, that holds the answer once (where the reader is to copy it from).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ingest import open_document
from ingest.render import text_layer

HERE = Path(__file__).resolve().parent
DOCS = HERE / "docs"
QUESTIONS = HERE / "questions.json"
KINDS = {"licence", "manual", "spec", "guide"}


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def page_texts(path: Path) -> list[str]:
    """The text of each page of a .txt document as ingest lays it out (index 0 = page 1)."""
    with open_document(path, ".txt") as doc:
        return [text_layer(doc, doc.load_page(i)) for i in range(doc.page_count)]


def load_questions(here: Path) -> list[dict]:
    """Every question of a set: ``questions*.json`` in its directory, in file order."""
    out: list[dict] = []
    for path in sorted(here.glob("questions*.json")):
        out += json.loads(path.read_text(encoding="utf-8"))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    here = Path(args[0]).resolve() if args else HERE
    training = here != HERE
    questions = load_questions(here)
    paths = sorted((here / "docs").glob("*.txt"))
    pages = {p.name: [squash(t) for t in page_texts(p)] for p in paths}
    failures: list[str] = []
    notes: list[str] = []
    if training:
        from lab.realtext import shingles

        unseen: set[tuple[str, ...]] = set()
        for p in sorted(DOCS.glob("*.txt")):
            unseen |= shingles(p.read_text(encoding="utf-8"))
        for p in paths:
            shared = shingles(p.read_text(encoding="utf-8")) & unseen
            if shared:
                run = " ".join(next(iter(shared)))
                failures.append(
                    f"{p.name}: shares {len(shared)} 8-word runs with lab/natural: {run!r}"
                )
    fields = {"doc", "question", "answer", "page", "kind"}
    answered = absent = 0
    for i, q in enumerate(questions):
        where = f"#{i} ({q.get('doc')}): {q.get('question')!r}"
        extra = set(q) - fields
        if not fields <= set(q) or extra - ({"context"} if training else {"accept"}):
            failures.append(f"{where}: bad fields: {sorted(q)}")
            continue
        if q["kind"] not in KINDS:
            failures.append(f"{where}: bad kind {q['kind']!r}, one of {sorted(KINDS)}")
            continue
        doc_pages = pages.get(q["doc"])
        if doc_pages is None:
            failures.append(f"{where}: no such document")
            continue
        if q["answer"] is None:
            absent += 1
            if q["page"] is not None:
                failures.append(f"{where}: no answer but page {q['page']}")
            continue
        answered += 1
        if not isinstance(q["page"], int) or not 1 <= q["page"] <= len(doc_pages):
            failures.append(f"{where}: page {q['page']} not in 1..{len(doc_pages)}")
            continue
        answer = squash(q["answer"])
        found = [n for n, text in enumerate(doc_pages, 1) if answer in text]
        if q["page"] not in found:
            failures.append(f"{where}: {answer!r} not on page {q['page']} (found on {found})")
        elif len(found) > 1:
            notes.append(f"{where}: {answer!r} is on pages {found}")
        accept = q.get("accept", [])
        if not isinstance(accept, list) or not all(isinstance(a, str) and a for a in accept):
            failures.append(f"{where}: accept must be a list of answers, not {accept!r}")
            continue
        for alt in accept:
            if squash(alt) not in doc_pages[q["page"] - 1]:
                failures.append(f"{where}: accepted {alt!r} not on page {q['page']}")
        if training and q["page"] in found:
            text = doc_pages[q["page"] - 1]
            context = squash(q.get("context") or "")
            if context and (text.count(context) != 1 or context.count(answer) != 1):
                failures.append(f"{where}: context not once on its page or answer not once in it")
            elif not context and text.count(answer) > 1:
                times = text.count(answer)
                failures.append(f"{where}: {answer!r} is {times} times on its page: give a context")
    for note in notes:
        print("note:", note)
    for failure in failures:
        print("FAIL:", failure)
    counts = ", ".join(f"{name} {len(p)} pages" for name, p in pages.items())
    print(f"documents: {len(pages)} ({counts})")
    print(
        f"questions: {len(questions)} ({answered} answered, {absent} absent); "
        f"failures: {len(failures)}; answers on several pages: {len(notes)}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
