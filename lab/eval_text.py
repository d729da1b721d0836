"""Evaluate the reference model on its text tier, the product's exact memory: ``make eval``.

    python -m lab.eval_text            # ~10-20 minutes on a 2-core CPU
    python -m lab.eval_text --quick    # a smoke run (the tests run it)
    python -m lab.eval_text --extractor off   # the one-stage copy path, for comparison
    python -m lab.eval_text --extractor data/train/extractor/extractor.safetensors  # a candidate

Everything goes through the service's own code: ``ReferenceBackend.encode_text`` (what ingest
caches), ``ReferenceBackend.answer`` (what ``POST /v1/ask`` runs: pack, read, copy a span or say
not found, page scores) and the model's batched greedy decoder for read-back. Sections:

    readback   held-out pages read back from their text tier: character precision (1 - edit
               distance / length, whitespace runs collapsed), whole page and first 256 chars
    one-page   a question about a fact of one page, that page alone in memory
    needle     one fact among N = 10, 100, 1,000 text-tier pages at depths 0-100%: answer
               exact, needle page cited first
    absent     questions whose answer no page holds, N = 10 and 100: the rate of invented
               answers (anything but "not found")
    cross      held-out cross-document sets (counts, comparisons): the honest figure
    natural    natural questions over real documents the project did not write
               (lab/natural: licences, manuals, specifications): answer span and page cited
    people     the held-out questions people wrote over real documents (lab.qa's held-out
               split, which training never reads, less the third that calibrates the "no
               answer" threshold, qa.calibrates): a fixed sample of answered ones, each asked
               over its own document's pages, answer span and page cited; and a sample of the
               unanswerable ones: invented answers. Ten times natural's questions, so a change of
               a few points is a signal, not one question
    speed      one question over 100 and 1,000 pages at the text tier and at tiny: context
               tokens, kv bytes, seconds

Held-out pages come from lab.textdata's held-out split: training never sees their values.
An answer is right when it equals the expected one after collapsing whitespace, ignoring case;
for the natural questions "span right" also counts an answer that contains the expected span
and is at most twice its length plus 10 characters (a span a reader would accept), or equals
one of the question's other accepted answers (``accept`` in lab/natural/questions.json: the
shorter spans a reader would also take, "2" for "exit status is 2", as SQuAD keeps several
annotators' answers); "span right, expected span only" is the figure without them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kb.model.base import ContextPage, PageTensors
from kb.model.reference import backend as reference_backend
from kb.model.reference.backend import ReferenceBackend
from kb.model.reference.extractor import SpanExtractor
from kb.model.reference.processing_reference import decode, read_prompt
from lab import data, qa, textdata
from lab.metrics import answer_matches as exact
from lab.metrics import cited_first, precision, span_right, token_f1
from lab.metrics import collapse_whitespace as squash
from lab.natural.check import QUESTIONS as NATURAL_QUESTIONS
from lab.natural.check import page_texts

NATURAL_DOCS = NATURAL_QUESTIONS.parent / "docs"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Sizes:
    readback_pages: int
    one_page: int
    needle: dict[int, int]  # N -> questions
    absent: dict[int, int]
    cross_sets: int
    natural: bool
    speed: tuple[int, ...]
    people: tuple[int, int] = (0, 0)  # held-out questions people wrote: answered, unanswerable


FULL = Sizes(
    24, 60, {10: 40, 100: 25, 1000: 40}, {10: 20, 100: 10}, 12, True, (100, 1000), (300, 100)
)
QUICK = Sizes(2, 3, {10: 2}, {10: 2}, 1, False, (10,), (2, 1))


class Pages:
    """Text-tier ContextPages with their tensors encoded once (as ingest caches them)."""

    def __init__(self, backend: ReferenceBackend):
        self.backend = backend
        self._cache: dict[str, PageTensors] = {}

    def page(self, text: str, doc: str, number: int) -> ContextPage:
        if text not in self._cache:
            self._cache[text] = self.backend.encode_text([text])[0]
        return ContextPage(doc, number, f"{doc} p.{number}", "text", self._cache[text], text)


def ask(backend: ReferenceBackend, question: str, pages: list[ContextPage]):
    answer = backend.answer(question, pages)
    top = cited_first(answer.page_scores)
    return answer, -1 if top is None else top


def read_text_pages(backend: ReferenceBackend, texts: list[str], extra: int = 8) -> list[str]:
    """Text-tier pages read back by the model's batched greedy decoder, 8 pages at a time,
    each up to its length + ``extra`` bytes: what ``read_page`` reads, page by page."""
    pages = [ContextPage("readback", i, f"p.{i}", "text", text=t) for i, t in enumerate(texts)]
    kvs = [backend.page_kv(p).float() for p in pages]
    spans = [backend.page_span(p) for p in pages]
    model = backend.model
    got: list[str] = []
    for i in range(0, len(texts), 8):
        batch = kvs[i : i + 8]
        lens = [len(t.encode()) + extra for t in texts[i : i + 8]]
        memory = model.pack_batch(batch, [sp for sp in spans[i : i + 8] if sp is not None])
        ids, _ = model.generate_batch([read_prompt()] * len(batch), memory, lens)
        got.extend(decode(row) for row in ids)
    return got


def section_readback(backend: ReferenceBackend, n: int, rng: random.Random) -> dict[str, Any]:
    texts = [textdata.make_page(rng, "heldout").text for _ in range(n)]
    got = read_text_pages(backend, texts)
    whole = [precision(g, t) for g, t in zip(got, texts, strict=True)]
    head = [precision(squash(g)[:256], squash(t)[:256]) for g, t in zip(got, texts, strict=True)]
    return {
        "pages": n,
        "precision": statistics.mean(whole),
        "precision_first_256": statistics.mean(head),
        "example": {"truth": texts[0][:200], "read": got[0][:200]},
    }


def section_one_page(backend, pages: Pages, n: int, rng: random.Random) -> dict[str, Any]:
    right = 0
    for i in range(n):
        s = textdata.ask_sample(rng, "heldout", 1, p_absent=0.0)
        answer, _ = ask(backend, s.question, [pages.page(s.pages[0], "one", i)])
        right += exact(answer.text, s.answer)
    return {"questions": n, "accuracy": right / n}


def fillers(rng: random.Random, n: int) -> list[textdata.TextPage]:
    return [textdata.make_page(rng, "heldout", max_bytes=2500) for _ in range(n)]


def haystack(pool: list[textdata.TextPage], n: int, s: textdata.Sample) -> list[str]:
    """Up to ``n`` pool pages around a question: none that holds its answer string or states its
    fact with another answer (textdata.conflicts), so that the question has one right answer,
    its needle's, or none."""
    return [p.text for p in pool[:n] if s.answer not in p.text and not textdata.conflicts(p, s.key)]


def section_needle(backend, pages: Pages, sizes: dict[int, int], rng: random.Random):
    out: dict[str, Any] = {}
    pool = fillers(random.Random("kb-eval-text/pool"), max(sizes)) if sizes else []
    for n, questions in sizes.items():
        right = cited = read = 0
        per_depth: dict[str, list[int]] = {}
        seconds = []
        outcomes = []  # per question, in order: 1 = answered right
        for q in range(questions):
            s = textdata.ask_sample(rng, "heldout", 1, p_absent=0.0, max_bytes=2500)
            others = haystack(pool, n - 1, s)
            depth = DEPTHS[q % len(DEPTHS)]
            at = round(depth * len(others))
            texts = others[:at] + [s.pages[0]] + others[at:]
            ctx = [pages.page(t, f"d{i}", 1) for i, t in enumerate(texts)]
            started = time.perf_counter()
            answer, top = ask(backend, s.question, ctx)
            seconds.append(time.perf_counter() - started)
            ok = exact(answer.text, s.answer)
            outcomes.append(int(ok))
            right += ok
            cited += top == at
            read += read_by_reader(backend, s.question, s.answer, ctx, at)
            per_depth.setdefault(f"{depth:.0%}", []).append(int(ok))
        out[str(n)] = {
            "questions": questions,
            "accuracy": right / questions,
            "cited_first": cited / questions,
            # two-stage copy path: the answer was among the windows stage 1 gave the reader
            "answer_in_read_windows": read / questions if backend.extractor else None,
            "by_depth": {d: sum(v) / len(v) for d, v in per_depth.items()},
            "outcomes": outcomes,
            "seconds_median": statistics.median(seconds),
        }
    return out


def read_by_reader(backend, question: str, answer: str, ctx: list[ContextPage], at: int) -> bool:
    """Whether stage 1 of the two-stage copy path put ``answer`` (on page ``at``) among the
    windows the extractive reader reads: a miss is then stage 1's, not the reader's."""
    if backend.extractor is None:
        return False
    windows = backend.reading_windows(question, ctx, backend.packed(ctx))
    return any(w.page == at and squash(answer) in squash(w.text) for w in windows)


def section_absent(backend, pages: Pages, sizes: dict[int, int], rng: random.Random):
    """Questions about a fact of a page that is not in the memory, over N held-out pages."""
    out: dict[str, Any] = {}
    pool = fillers(random.Random("kb-eval-text/pool"), max(sizes) if sizes else 0)
    for n, questions in sizes.items():
        invented = 0
        examples: list[dict[str, str]] = []
        for _ in range(questions):
            s = textdata.ask_sample(rng, "heldout", 1, p_absent=0.0)
            texts = haystack(pool, n, s)
            ctx = [pages.page(t, f"a{i}", 1) for i, t in enumerate(texts)]
            answer, _ = ask(backend, s.question, ctx)
            invented += answer.found
            if answer.found and len(examples) < 3:
                examples.append({"question": s.question, "answer": answer.text})
        out[str(n)] = {
            "questions": questions,
            "invented": invented / questions,
            "examples": examples,
        }
    return out


def section_cross(backend, pages: Pages, sets: int, seed: int) -> dict[str, Any]:
    right = total = 0
    for k in range(sets):
        docs, facts = data.cross_document_set(seed + k, "heldout")
        ctx = [pages.page(d.pages[0].text, f"c{k}.{i}", 1) for i, d in enumerate(docs)]
        for fact in facts:
            answer, _ = ask(backend, fact.question, ctx)
            right += exact(answer.text, fact.answer)
            total += 1
    return {"questions": total, "accuracy": right / max(1, total)}


def score_natural(answer: str, found: bool, q: dict[str, Any]) -> dict[str, Any]:
    """One natural question's answer scored: ``span`` against the expected span (span_right)
    or one of the other answers a reader would take (``accept``, as SQuAD keeps several
    annotators' answers), these matched whole: a short one ("2") is not looked for inside a
    longer answer ("20 days"); ``span_strict`` against the expected span only."""
    accepted = [q["answer"], *q.get("accept", [])]
    strict = span_right(answer, q["answer"])
    whole = any(exact(answer, a) for a in accepted)
    return {
        "exact": whole,
        "span": strict or whole,
        "span_strict": strict,
        "f1": max(token_f1(answer, a) for a in accepted) if found else 0.0,
    }


def section_natural(backend, pages: Pages) -> dict[str, Any]:
    questions = json.loads(NATURAL_QUESTIONS.read_text(encoding="utf-8"))
    ctx: list[ContextPage] = []
    where: dict[tuple[str, int], int] = {}
    for path in sorted(NATURAL_DOCS.glob("*.txt")):
        for number, text in enumerate(page_texts(path), start=1):
            where[(path.name, number)] = len(ctx)
            ctx.append(pages.page(text, path.name, number))
    rows = []
    for q in questions:
        answer, top = ask(backend, q["question"], ctx)
        if q["answer"] is None:
            rows.append({"absent": True, "invented": answer.found})
            continue
        gold = where[(q["doc"], q["page"])]
        rows.append(
            {
                "absent": False,
                **score_natural(answer.text, answer.found, q),
                "cited": top == gold and answer.found,
                "read": read_by_reader(backend, q["question"], q["answer"], ctx, gold),
                "question": q["question"],
                "expected": q["answer"],
                "answer": answer.text,
            }
        )
    answered = [r for r in rows if not r["absent"]]
    absent = [r for r in rows if r["absent"]]
    return {
        "documents": len({q["doc"] for q in questions}),
        "pages": len(ctx),
        "questions": len(answered),
        "span_right": sum(r["span"] for r in answered) / len(answered),
        "span_right_strict": sum(r["span_strict"] for r in answered) / len(answered),
        "exact": sum(r["exact"] for r in answered) / len(answered),
        "f1": sum(r["f1"] for r in answered) / len(answered),
        "cited_first": sum(r["cited"] for r in answered) / len(answered),
        "answer_in_read_windows": sum(r["read"] for r in answered) / len(answered),
        "absent_questions": len(absent),
        "invented": sum(r["invented"] for r in absent) / max(1, len(absent)),
        "examples": answered[:8],
        "misses": [r for r in answered if not r["span"]],  # where to look next
    }


CURVE = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)  # thresholds the people's section also reports


def section_people(backend, pages: Pages, answered: int, absent: int) -> dict[str, Any]:
    """lab.qa's held-out questions, each over the pages of the document it was written about.
    Every answer's score is kept (the reader runs with no threshold), so the figures are given
    at the calibrated threshold and, as a curve, at others (``CURVE``)."""
    docs = qa.documents("heldout")
    measured = [(d, q) for d in docs for q in d.questions if not qa.calibrates(q.question)]
    asked = [(d, q) for d, q in measured if q.answer is not None]
    unanswerable = [(d, q) for d, q in measured if q.answer is None]
    pick = random.Random("kb-eval-text/people")  # the same questions on every run
    asked = [asked[i] for i in sorted(pick.sample(range(len(asked)), min(answered, len(asked))))]
    unanswerable = [
        unanswerable[i]
        for i in sorted(pick.sample(range(len(unanswerable)), min(absent, len(unanswerable))))
    ]
    reader = backend.extractor
    threshold = reader.threshold if reader is not None else None
    rows: list[dict[str, Any]] = []
    try:
        if reader is not None:
            reader.threshold = float("-inf")  # every best span, with its score
        for doc, q in asked + unanswerable:
            ctx = [pages.page(text, doc.name, n) for n, text in enumerate(doc.pages, start=1)]
            answer, top = ask(backend, q.question, ctx)
            row = {"question": q.question, "expected": q.answer, "answer": answer.text}
            row["found"], row["score"] = answer.found, answer.score
            if q.answer is not None:
                row["span"] = span_right(answer.text, q.answer)
                row["exact"] = exact(answer.text, q.answer)
                row["f1"] = token_f1(answer.text, q.answer) if answer.found else 0.0
                row["cited"] = answer.found and top == q.page
            rows.append(row)
    finally:
        if reader is not None:
            reader.threshold = threshold

    def at(t: float | None) -> dict[str, float]:
        def found(r: dict[str, Any]) -> bool:
            return r["found"] and (t is None or (r["score"] is not None and r["score"] > t))

        got = [r for r in rows if r["expected"] is not None]
        none = [r for r in rows if r["expected"] is None]
        n = max(1, len(got))
        return {
            "span_right": sum(r["span"] and found(r) for r in got) / n,
            "exact": sum(r["exact"] and found(r) for r in got) / n,
            "f1": sum(r["f1"] * found(r) for r in got) / n,
            "cited_first": sum(r["cited"] and found(r) for r in got) / n,
            "invented": sum(found(r) for r in none) / max(1, len(none)),
        }

    return {
        "documents": len({d.name for d, _ in asked + unanswerable}),
        "questions": len(asked),
        "absent_questions": len(unanswerable),
        "threshold": threshold,
        **at(threshold),
        "curve": {str(t): at(t) for t in CURVE} if reader is not None else {},
        "examples": [r for r in rows if r["expected"] is not None][:8],
    }


def optical_pages(backend, tier: str, n: int) -> list[PageTensors]:
    """``n`` held-out filler pages of lab.data, rendered and encoded at ``tier`` as ingest does:
    what the memory holds of an optical page (tokens, kv and, with a cell reader, read-back)."""
    from ingest import tier_image
    from lab.data import filler_page

    images = [tier_image(filler_page(seed, "heldout").image, tier) for seed in range(n)]
    return backend.encode(images, tier)


def section_speed(backend, pages: Pages, sizes: Sequence[int], rng: random.Random):
    """One question over N pages at the text tier and at tiny. The tiny pages are up to 20 real
    pages encoded at tiny (optical_pages), repeated: a question reads every page's read-back,
    so its cost depends on what the pages hold, not only on their shapes."""
    out: dict[str, Any] = {}
    cfg = backend.config
    texts = [p.text for p in fillers(rng, max(sizes))]
    T = backend.tier_tokens["tiny"]
    tiny = optical_pages(backend, "tiny", min(20, max(sizes))) if sizes else []
    for n in sizes:
        ctx_text = [pages.page(t, f"s{i}", 1) for i, t in enumerate(texts[:n])]
        ctx_tiny = [ContextPage(f"s{i}", 1, "", "tiny", tiny[i % len(tiny)]) for i in range(n)]
        row: dict[str, Any] = {}
        for name, ctx in (("text", ctx_text), ("tiny", ctx_tiny)):
            backend.answer("What is the access code for the Falcon archive?", ctx)  # warm
            times = []
            for _ in range(3):
                started = time.perf_counter()
                backend.answer("What is the access code for the Falcon archive?", ctx)
                times.append(time.perf_counter() - started)
            tokens = sum(backend.text_tokens(p.text or "") if name == "text" else T for p in ctx)
            row[name] = {
                "tokens": tokens,
                "kv_bytes": tokens * cfg.n_layers * 2 * cfg.d_model * 2,  # fp16 cache
                "seconds": statistics.median(times),
            }
        out[str(n)] = row
    return out


GOALS = [
    ("text read-back", ("readback", "precision"), 0.95),
    ("one-page facts", ("one_page", "accuracy"), 0.95),
    ("needle N=10", ("needle", "10", "accuracy"), 0.95),
    ("needle N=100", ("needle", "100", "accuracy"), 0.95),
    ("needle N=1000", ("needle", "1000", "accuracy"), 0.95),
    ("needle page cited first, N=100", ("needle", "100", "cited_first"), 0.95),
    ("natural questions: span right", ("natural", "span_right"), 0.80),
    ("natural questions: page cited", ("natural", "cited_first"), 0.80),
    ("people's held-out questions: span right", ("people", "span_right"), 0.80),
    ("people's held-out questions: page cited", ("people", "cited_first"), 0.80),
]


def _get(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node)


def run(
    backend: ReferenceBackend,
    sizes: Sizes,
    seed: int,
    log=print,
    sections: Sequence[str] | None = None,
) -> dict[str, Any]:
    pages = Pages(backend)
    report: dict[str, Any] = {"model": backend.version, "seed": seed}
    steps = [
        ("readback", lambda r: section_readback(backend, sizes.readback_pages, r)),
        ("one_page", lambda r: section_one_page(backend, pages, sizes.one_page, r)),
        ("needle", lambda r: section_needle(backend, pages, sizes.needle, r)),
        ("absent", lambda r: section_absent(backend, pages, sizes.absent, r)),
        ("cross", lambda r: section_cross(backend, pages, sizes.cross_sets, seed)),
        ("speed", lambda r: section_speed(backend, pages, sizes.speed, r)),
    ]
    if sizes.natural:
        steps.insert(5, ("natural", lambda r: section_natural(backend, pages)))
    if any(sizes.people):
        steps.insert(5, ("people", lambda r: section_people(backend, pages, *sizes.people)))
    for name, fn in steps:
        if sections and name not in sections:
            continue
        started = time.perf_counter()
        report[name] = fn(random.Random(f"kb-eval-text/{seed}/{name}"))
        log(f"{name}: {time.perf_counter() - started:.0f} s")
    report["scorer"] = {  # read at run time: --scorer may set them
        "weight": reference_backend.SEGMENT_WEIGHT,
        "floor": reference_backend.SEGMENT_FLOOR,
    }
    report["goals"] = [
        {"goal": g, "value": _get(report, path), "target": target} for g, path, target in GOALS
    ]
    return report


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"text tier: {report['model']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    for g in report["goals"]:
        value = "-" if g["value"] is None else f"{g['value']:.1%}"
        table.add_row(g["goal"], value, f">= {g['target']:.0%}")
    for n, row in report.get("absent", {}).items():
        table.add_row(f"invented answers when absent, N={n}", f"{row['invented']:.1%}", "low")
    if "natural" in report:
        strict = report["natural"]["span_right_strict"]
        table.add_row("natural: span right, expected span only", f"{strict:.1%}", "")
        table.add_row("natural: invented when absent", f"{report['natural']['invented']:.1%}", "")
        table.add_row("natural: exact", f"{report['natural']['exact']:.1%}", "")
        table.add_row("natural: token F1 (SQuAD)", f"{report['natural']['f1']:.1%}", "")
    if "people" in report:
        table.add_row("people's: invented when absent", f"{report['people']['invented']:.1%}", "")
        table.add_row("people's: exact", f"{report['people']['exact']:.1%}", "")
        table.add_row("people's: token F1 (SQuAD)", f"{report['people']['f1']:.1%}", "")
        for t, row in report["people"]["curve"].items():
            table.add_row(
                f"people's at threshold {t}: span / cited / invented",
                f"{row['span_right']:.1%}",
                f"{row['cited_first']:.1%} / {row['invented']:.1%}",
            )
    if "cross" in report:
        table.add_row("cross-document", f"{report['cross']['accuracy']:.1%}", "(honest)")
    for n, row in report.get("speed", {}).items():
        for tier, r in row.items():
            table.add_row(
                f"speed N={n} {tier}",
                f"{r['seconds']:.2f} s",
                f"{r['tokens']:,} tok, {r['kv_bytes'] / 2**20:.0f} MiB kv",
            )
    console.print(table)


def main(argv: Sequence[str] | None = None, backend: ReferenceBackend | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--weights", type=Path, help="weights file or directory (default: shipped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON (default data/eval/text-<version>.json)")
    parser.add_argument("--sections", nargs="*", help="only these sections (default: all)")
    parser.add_argument("--ns", type=int, nargs="*", help="needle haystack sizes (default: all)")
    parser.add_argument(
        "--scorer",
        type=float,
        nargs=2,
        metavar=("WEIGHT", "FLOOR"),
        help="the question scorer's segment weight and floor (default: the backend's)",
    )
    parser.add_argument(
        "--extractor",
        default="",
        help="the copy path's fine stage: a weights file, or 'off' for the one-stage copy path "
        "(default: the shipped extractor, where there is one)",
    )
    parser.add_argument(
        "--identifiers",
        choices=("on", "off"),
        default="on",
        help="the copy path's identifier step: read only pages naming the question's codes and "
        "numbers (default on, as the service)",
    )
    args = parser.parse_args(argv)
    if backend is None:
        reader: SpanExtractor | bool | None = None
        if args.extractor == "off":
            reader = False
        elif args.extractor:
            reader = SpanExtractor(Path(args.extractor))
        backend = ReferenceBackend(
            args.weights, extractor=reader, identifiers=args.identifiers == "on"
        )
    if args.scorer:
        reference_backend.SEGMENT_WEIGHT, reference_backend.SEGMENT_FLOOR = args.scorer
    sizes = QUICK if args.quick else FULL
    if args.ns:
        sizes = replace(sizes, needle={n: sizes.needle.get(n, 10) for n in args.ns})
    report = run(backend, sizes, args.seed, sections=args.sections)
    report["identifiers"] = backend.identifiers
    out = args.out or Path("data/eval") / f"text-{backend.version}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print_report(report, Console())
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    main()
