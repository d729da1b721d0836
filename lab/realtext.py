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
    "url": ["what URL", "which address", "what"],
    "option": ["which option", "what flag", "what"],
    "quoted": ["what", "which value"],
    "date": ["when", "what date"],
    "amount": ["how much", "how many", "what"],
    "name": ["who", "what", "which"],
    "code": ["what", "which"],
}


@dataclass
class Cloze:
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


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
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
        banned |= _shingles(text)
    out = []
    for text in _sources():
        for page in _pages(text):
            if not (_shingles(page) & banned):
                out.append(page)
    return tuple(out)


def cloze(rng: random.Random, page: str, tries: int = 8) -> Cloze | None:
    """A question about one span of one sentence of ``page``, or None if none was found."""
    bounds = [(a, b) for a, b in char_segments(page) if 40 <= b - a <= 300]
    for _ in range(tries if bounds else 0):
        a, b = rng.choice(bounds)
        sentence = page[a:b]
        found = [(kind, m) for kind, p in _SPANS for m in p.finditer(sentence)]
        found = [
            (k, m)
            for k, m in found
            if 1 <= len(m.group()) <= 60 and m.end() - m.start() < (b - a) / 2
        ]
        if not found:
            continue
        kind, m = rng.choice(found)
        wh = rng.choice(_WH[kind])
        q = (sentence[: m.start()] + wh + sentence[m.end() :]).strip()
        q = " ".join(q.split()).rstrip(".:;!,") + "?"
        if len(_WORD.findall(q)) < 4:
            continue
        return Cloze(q, a + m.start(), a + m.end())
    return None
