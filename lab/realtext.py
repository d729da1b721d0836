"""Real text the project did not write, as pages with cloze questions: the extractor's second
source of training data, beside lab.textdata's synthetic pages.

The synthetic pages teach the answer's types and the template questions; people's questions over
real manuals and licences use other words and other sentence shapes, and a reader trained on
templates alone copies the template, not the meaning (docs/benchmarks.md). Here the pages are
real English technical prose that ships on every machine of the project: the long descriptions
of the installed Python distributions (their READMEs) and the docstrings of the standard library.
A question is one of a page's sentences with an answer-like span (a number and its unit, a
date, an option, a quoted value, a URL, a name, a code-like token) replaced by a wh-word, as in
Lewis et al. 2019, "Unsupervised Question Answering by Cloze Translation": "The default level is
-6." -> "The default level is what?", answer "-6".

No page that shares an 8-word run with the natural-question documents (lab/natural) is used, so
that evaluation stays on text the reader has never seen.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import random
import re
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kb.embed import char_segments

PAGE_CHARS = 2500
_HTML = re.compile(r"<[^>]{1,200}>|!\[[^\]]*\]\([^)]*\)|\[!\[.*?\]\(.*?\)\]\(.*?\)")
_MD_LINK = re.compile(r"\[([^\]]{1,80})\]\([^)]{1,300}\)")
_WORD = re.compile(r"[A-Za-z]+")

# (kind, pattern): spans a question could ask for, most specific first
_SPANS: list[tuple[str, re.Pattern[str]]] = [
    ("url", re.compile(r"https?://[^\s)>\]]+[^\s)>\].,;:]")),
    ("option", re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*(?:=\S+)?")),
    ("quoted", re.compile(r"[`'\"][^`'\"\n]{1,40}[`'\"]")),
    (
        "date",
        re.compile(
            r"\b(?:\d{1,2} )?(?:January|February|March|April|May|June|July|August|September|"
            r"October|November|December)(?: \d{1,2},?)? \d{4}\b|\b(?:19|20)\d\d-\d\d-\d\d\b"
        ),
    ),
    (
        "amount",
        re.compile(
            r"\b\d[\d,.]*\s?(?:%|ms|s|seconds?|minutes?|hours?|days?|weeks?|years?|bytes?|bits?|"
            r"[KMGT]i?B|characters?|lines?|times|percent)\b|\b\d+(?:\.\d+)+\b|\b\d{2,}\b"
        ),
    ),
    ("name", re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+){1,3}\b")),
    ("code", re.compile(r"\b[A-Za-z_]\w*(?:[._/]\w+)+\b|\b\w+\(\)")),
]
_WH = {
    "url": ["what URL", "which address", "what", "where"],
    "option": ["which option", "what flag", "what", "which switch"],
    "quoted": ["what", "which value", "what string"],
    "date": ["when", "what date", "which year"],
    "amount": ["how much", "how many", "what"],
    "name": ["who", "what", "which"],
    "code": ["what", "which", "what name"],
}
# A wh-word that names the amount's unit, as people ask: "how long" for "30 days"
_UNIT_WH = [
    (re.compile(r"(?i)(ms|s|seconds?|minutes?|hours?|days?|weeks?|years?)$"), ["how long"]),
    (re.compile(r"(?i)(%|percent)$"), ["what percentage", "how much"]),
    (re.compile(r"(?i)(bytes?|bits?|[KMGT]i?B)$"), ["how big", "how large", "what size"]),
    (re.compile(r"(?i)(characters?|lines?|times)$"), ["how many"]),
]
_AUX = re.compile(
    r"\b(is|are|was|were|can|will|must|should|may|might|could|would|has|have|had)\b", re.I
)
_PREFIXES = [
    "",
    "",
    "",
    "",
    "According to the docs, ",
    "Quick question: ",
    "Do you know ",
    "In this document, ",
    "I'd like to know: ",
    "Can you tell me ",
]
_STOP = set(
    """a an the of to in on for and or is are be by with as at from that this it its
which what""".split()
)


@dataclass
class Cloze:
    page: str
    question: str
    start: int  # char span of the answer in the page
    end: int


def _clean(text: str) -> str:
    text = _HTML.sub(" ", text)
    text = _MD_LINK.sub(r"\1", text)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith(("[!", "|", "```"))]
    return "\n".join(lines)


def _pages(text: str) -> list[str]:
    """Text cut into pages of at most PAGE_CHARS characters on paragraph boundaries."""
    pages, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        if cur and len(cur) + len(para) + 2 > PAGE_CHARS:
            pages.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para[:PAGE_CHARS]
    if cur:
        pages.append(cur)
    return [p for p in pages if len(p) >= 300]


def shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _sources() -> list[str]:
    texts = []
    for dist in importlib.metadata.distributions():
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""  # type: ignore[attr-defined]
        if len(body) > 500:
            texts.append(_clean(body))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        docs = [ast.get_docstring(tree) or ""]
        docs += [
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        ]
        text = "\n\n".join(d for d in docs if len(d) > 80)
        if text:
            texts.append(text)
    return texts


@cache
def corpus(exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every page of the sources, less those that share an 8-word run with ``exclude``."""
    banned: set[tuple[str, ...]] = set()
    for text in exclude:
        banned |= shingles(text)
    out = []
    for text in _sources():
        for page in _pages(text):
            if not (shingles(page) & banned):
                out.append(page)
    return tuple(out)


EVALUATED = Path(__file__).parent  # lab/natural/docs/*.txt and lab/realpdf/*.pdf: never trained on


def evaluated_texts() -> tuple[str, ...]:
    """The text of every document the lab evaluates on: the natural questions' documents and the
    real PDFs' text layers."""
    import pymupdf

    texts = [p.read_text() for p in sorted((EVALUATED / "natural" / "docs").glob("*.txt"))]
    for pdf in sorted((EVALUATED / "realpdf").glob("*.pdf")):
        with pymupdf.open(pdf) as doc:
            texts.append("\n".join(page.get_text() for page in doc))
    return tuple(texts)


@cache
def split_pages(split: str = "train") -> tuple[str, ...]:
    """``corpus`` less every page that shares text with an evaluated document; one page in ten
    (by its hash) is held out and never trained on."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    pages = corpus(evaluated_texts())
    held = [hashlib.sha256(p.encode()).digest()[0] < 26 for p in pages]
    return tuple(p for p, h in zip(pages, held, strict=True) if h == (split == "heldout"))


def _content(text: str) -> list[str]:
    return [w for w in _WORD.findall(text) if len(w) > 2 and w.lower() not in _STOP]


def _prose(sentence: str) -> bool:
    """A sentence of prose, not code: mostly words, no prompt or assignment."""
    if ">>>" in sentence or re.search(r"[{}=]|\w\(", sentence):
        return False
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    return letters >= 0.85 * len(sentence)


def _wh_for(rng: random.Random, kind: str, span: str) -> str:
    if kind == "amount":
        for unit, words in _UNIT_WH:
            if unit.search(span) and rng.random() < 0.7:
                return rng.choice(words)
    return rng.choice(_WH[kind])


def _clause(sentence: str, a: int, b: int) -> tuple[str, int, int]:
    """The clause of ``sentence`` that holds [a, b): cut at ';', ':' and ', ' before and after."""
    cuts = [m.end() for m in re.finditer(r"[;:]\s|,\s", sentence[:a])]
    lo = cuts[-1] if cuts else 0
    after = re.search(r"[;:]\s|,\s", sentence[b:])
    hi = b + after.start() if after else len(sentence)
    return sentence[lo:hi], a - lo, b - lo


def _drop_words(rng: random.Random, text: str, p: float) -> str:
    """People name a few of a sentence's words, not all: drop some, stop words more often."""
    words = text.split()
    kept = [w for w in words if rng.random() >= (p * 1.5 if w.lower() in _STOP else p)]
    return " ".join(kept) if len(kept) >= 2 else text


def ask_about(rng: random.Random, sentence: str, kind: str, a: int, b: int) -> str:
    """A question whose answer is ``sentence[a:b]``, worded in one of several ways:
    the sentence with a wh-word in the span's place ("The default level is what?"), or
    the wh-word fronted with the verb inverted ("What is the default level?"), about the
    clause that holds the span or the whole sentence, some words dropped, a prefix or not."""
    wh = _wh_for(rng, kind, sentence[a:b])
    clause, ca, cb = _clause(sentence, a, b)
    if rng.random() < 0.6 and len(_WORD.findall(clause)) >= 6:
        sentence, a, b = clause, ca, cb
    left, right = sentence[:a].strip(), sentence[b:].strip().rstrip(".:;!,")
    r = rng.random()
    aux = list(_AUX.finditer(left))
    if r < 0.35:  # cloze: the wh-word in the span's place
        q = f"{left} {wh} {right}"
    elif aux:  # fronted: "X is 30 days" -> "how long is X?"; "X must be kept for 30 days"
        m = aux[-1]
        rest = (left[: m.start()] + left[m.end() :]).strip()
        rest = re.sub(r"\b(for|to|of|at|in|by|as|with|be)\s*$", "", rest).strip()
        q = f"{wh} {m.group().lower()} {rest} {right}"
    else:  # fronted, no verb to move: "what ... ?" over the rest of the words
        rest = re.sub(r"\b(for|to|of|at|in|by|as|with|is|are)\s*$", "", left).strip()
        q = f"{wh} {rest} {right}"
    q = " ".join(q.split())
    if rng.random() < 0.5:
        head, _, tail = q.partition(wh)
        q = head + wh + " " + _drop_words(rng, tail, rng.uniform(0.1, 0.35))
    q = " ".join(q.split()).rstrip(".:;!,")
    prefix = rng.choice(_PREFIXES)
    if prefix:
        q = prefix + q[0].lower() + q[1:]
    else:
        q = q[0].upper() + q[1:]
    return q + ("?" if rng.random() > 0.1 else "")


def cloze(rng: random.Random, page: str, tries: int = 8) -> Cloze | None:
    """A question about one span of one sentence of ``page``, or None if none was found."""
    bounds = [(a, b) for a, b in char_segments(page) if 40 <= b - a <= 300]
    for _ in range(tries if bounds else 0):
        a, b = rng.choice(bounds)
        sentence = page[a:b]
        if not _prose(sentence):
            continue
        found = [(kind, m) for kind, p in _SPANS for m in p.finditer(sentence)]
        found = [
            (k, m)
            for k, m in found
            if 1 <= len(m.group()) <= 60 and m.end() - m.start() < (b - a) / 2
        ]
        if not found:
            continue
        kind, m = rng.choice(found)
        q = ask_about(rng, sentence, kind, m.start(), m.end())
        if len(_content(q)) < 4:
            continue
        return Cloze(page, q, a + m.start(), a + m.end())
    return None
