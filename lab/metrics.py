"""The lab's one set of text metrics: every trainer and evaluation scores with these.

- precision = max(0, 1 - edit distance / reference length), in characters, after collapsing runs
  of whitespace on both sides (line breaks of a layout are not content); Fox-style read-back;
- an answer is right when it equals the expected one after collapsing whitespace, ignoring case;
- SQuAD's token F1 of an answer against the expected span (its normalisation: lower case, no
  punctuation, no articles), the partial credit extractive QA reports beside exact match.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from rapidfuzz.distance import Levenshtein


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance in characters (insert, delete, substitute: cost 1 each)."""
    return int(Levenshtein.distance(a, b))


def precision(hypothesis: str, reference: str) -> float:
    """max(0, 1 - edit distance / reference length), whitespace runs collapsed on both sides."""
    ref, hyp = collapse_whitespace(reference), collapse_whitespace(hypothesis)
    if not ref:
        raise ValueError("precision of an empty reference is undefined")
    return max(0.0, 1.0 - edit_distance(hyp, ref) / len(ref))


def head_precision(hypothesis: str, reference: str, chars: int) -> float:
    """``precision`` of the first ``chars`` characters of each (whitespace collapsed): how well
    the top of a page is read, whatever becomes of the rest. A read-back that stops early is
    still charged for the characters of the head it left out."""
    ref, hyp = collapse_whitespace(reference)[:chars], collapse_whitespace(hypothesis)[:chars]
    return precision(hyp, ref)


def answer_matches(answer: str, expected: str) -> bool:
    """Exact answer, after collapsing whitespace and ignoring case."""
    return collapse_whitespace(answer).casefold() == collapse_whitespace(expected).casefold()


def cited_first(page_scores: list[float]) -> int | None:
    """The page an answer cites first: the index of its highest page score, or None where no
    page scores above 0 (an answer that cites nothing cites no page first, not page 0)."""
    if not page_scores or max(page_scores) <= 0:
        return None
    return max(range(len(page_scores)), key=page_scores.__getitem__)


def span_right(answer: str, expected: str) -> bool:
    """The expected span, or an answer that contains it and is at most twice its length plus
    10 characters (a span a reader would accept: "37 engineers" for "37")."""
    a = collapse_whitespace(answer).casefold()
    e = collapse_whitespace(expected).casefold()
    return a == e or (e in a and len(a) <= 2 * len(e) + 10)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation (its evaluate-v2.0.py), as tokens."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split()


def token_f1(answer: str, expected: str) -> float:
    """SQuAD's token F1: the harmonic mean of the precision and recall of the answer's tokens
    against the expected span's, after squad_tokens; 1.0 when both are empty."""
    got, want = squad_tokens(answer), squad_tokens(expected)
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    p, r = common / len(got), common / len(want)
    return 2 * p * r / (p + r)
