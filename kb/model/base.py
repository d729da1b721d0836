"""The one interface every model backend implements (reference, deepseek-ocr2, ...).

A backend turns page images into per-page tensors worth caching (``encode``), reads a page back
from those tensors (``read_page``), and answers a question from the tensors of many pages packed
into one context (``answer``; ``answer_stream`` piece by piece, as the answer is generated).
Tensors are plain ``dict[str, torch.Tensor]`` so they can be stored as safetensors under
content-addressed keys (model version / tier / page hash).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from PIL import Image

T = TypeVar("T")

PageTensors = dict[str, torch.Tensor]


@dataclass
class ContextPage:
    """One page as the reader sees it: where it comes from, its tier, and its cached tensors."""

    document_id: str
    page: int  # 1-based page number in its document
    label: str  # a page marker for the prompt, e.g. "report.pdf p.3"
    tier: str  # "text" or a vision tier name
    tensors: PageTensors | None = None  # vision tiers
    text: str | None = None  # the text tier


# What an answer says when the memory does not support one: never an invented answer.
NOT_FOUND = "Not found in the collection."


@dataclass
class Answer:
    text: str
    # One score per context page, in the order given, higher = more used to answer (>= 0).
    page_scores: list[float] = field(default_factory=list)
    found: bool = True  # False: the memory holds no answer (text is NOT_FOUND)
    # How much the backend believes it (its own scale; None where it has none): the extractive
    # reader's best span minus "no answer", which a threshold turns into ``found``.
    score: float | None = None


class Backend(Protocol):
    name: str  # "reference", "deepseek-ocr2"
    version: str  # changes whenever encodings change: part of every tensor key
    trained: bool  # False while the weights are a random initialisation
    context_budget: int  # default max_context_tokens of a question
    # A hard cap on any question's context tokens (a decoder's window), None where there is none;
    # the reader never exceeds it, whatever budget a question asks for.
    context_limit: int | None
    tier_tokens: dict[str, int]  # vision tokens per page per tier this backend supports
    # The PIL mode its encoder reads ("L", "RGB"): ingest converts each page render once and
    # downscales it to the tiers in that mode (a grayscale resize is a third of a colour one).
    image_mode: str

    def encode(self, images: list[Image.Image], tier: str) -> list[PageTensors]:
        """Encode a batch of page renders (already at the tier's size) into one dict per page."""
        ...

    def text_tokens(self, text: str) -> int:
        """What the text tier of a page with this text costs in context tokens."""
        ...

    def encode_text(self, texts: list[str]) -> list[PageTensors]:
        """The text tier's tensors of pages with these texts, worth caching like a vision tier
        (an empty dict per page where the backend reads the text itself at question time)."""
        ...

    def read_page(self, page: ContextPage, max_new_tokens: int = 512) -> str:
        """What the model reads back from one page at its tier."""
        ...

    def answer(self, question: str, pages: list[ContextPage], max_new_tokens: int = 128) -> Answer:
        """Answer from all pages packed into one context."""
        ...

    def answer_stream(
        self, question: str, pages: list[ContextPage], max_new_tokens: int = 128
    ) -> Generator[str, None, Answer]:
        """``answer``, piece by piece: yields the answer's text as the backend produces it and
        returns the Answer (whose text is the one to keep: a decoder may cut a repetition it
        detects at the end). This default, for a backend that produces its answer at once,
        yields the whole text once; a backend whose decoder generates token by token
        overrides it (and inherits it by subclassing Backend explicitly)."""
        answer = self.answer(question, pages, max_new_tokens)
        if answer.text:
            yield answer.text
        return answer

    def warm_up(self) -> None:
        """Encode one short page's text, so that what loads on first use (a sentence embedder)
        and the kernels' first-call set-up are paid when a worker starts, not by the first
        document it encodes (~4 s on this CPU: docs/benchmarks.md, "Ingest end to end")."""
        self.encode_text(["Warm-up page. It has two sentences."])


def drain(stream: Generator[Any, None, T]) -> T:
    """Run a generator to its end and return what it returns: ``answer`` written as its
    ``answer_stream``, a decode loop as its steps, so that both forms are one path."""
    while True:
        try:
            next(stream)
        except StopIteration as done:
            return done.value
