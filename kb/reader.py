"""Answering: pack every ready page of a collection into one context and let the model read it.

No retrieval: the packer decides only how many tokens each page keeps, never whether a page is
looked at (pages are left out only when even the cheapest tier cannot hold them all, and then
they are counted). Only pages encoded for the model version this process runs are packed:
tensors of another version mean nothing to this model. The others (a reindex to another version
has switched them, or this process runs other weights than the catalog serves: kb.serving) are
counted too.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field

from ingest.tiers import TEXT
from kb import metrics
from kb.catalog import repo
from kb.catalog.models import Page
from kb.context import Context
from kb.model.base import Answer, ContextPage
from kb.packer import Candidate, pack


class EmptyCollection(LookupError):
    """The collection has no ready page to answer from."""


class OtherModelVersion(LookupError):
    """The collection's ready pages are all encoded for model versions this process does not
    run: it cannot read any of them."""


class BudgetTooSmall(ValueError):
    """The question's token budget holds no page at all: nothing to answer from."""


class BudgetTooLarge(ValueError):
    """The question asks for more context tokens than the model's budget allows."""


class PageNotReady(LookupError):
    """The page exists but has no tensors yet."""


@dataclass
class Citation:
    document_id: str
    page: int
    score: float
    tier: str = TEXT  # the tier the page was read at


@dataclass
class AskResult:
    answer: str
    citations: list[Citation]
    pages: int
    tokens: int
    tiers: dict[str, int]
    left_out: int
    model_version: str
    other_version: int = 0  # ready pages encoded for another model version: not packed
    left_out_pages: list[tuple[str, int]] = field(default_factory=list)
    found: bool = True  # False: the answer says the collection does not hold one


def _label(page: Page) -> str:
    return f"{page.document.filename} p.{page.number}"


@dataclass
class Question:
    """A question with its memory packed and its pages' tensors loaded: what ``prepare`` found,
    ready for the model (``answer``, ``stream``)."""

    text: str
    context: list[ContextPage]
    tokens: int
    tiers: dict[str, int]
    left_out_pages: list[tuple[str, int]]
    other_version: int  # ready pages encoded for another model version: not packed
    max_citations: int
    started: float  # time.monotonic() when the question came in


def ask(
    ctx: Context,
    question: str,
    collection: str = "default",
    max_context_tokens: int | None = None,
    max_citations: int = 5,
) -> AskResult:
    return answer(ctx, prepare(ctx, question, collection, max_context_tokens, max_citations))


def prepare(
    ctx: Context,
    question: str,
    collection: str = "default",
    max_context_tokens: int | None = None,
    max_citations: int = 5,
) -> Question:
    """Everything before the model: the budget checked (BudgetTooLarge, BudgetTooSmall), the
    collection's ready pages (EmptyCollection), packed, their tensors loaded."""
    started = time.monotonic()
    backend = ctx.backend
    # The backend's budget is also the most a question may ask for: memory and time grow with
    # the context, and one question must not take the whole service.
    if max_context_tokens is not None and max_context_tokens > backend.context_budget:
        raise BudgetTooLarge(
            f"max_context_tokens is at most {backend.context_budget} for this model; "
            f"ask with {backend.context_budget} or fewer"
        )
    budget = backend.context_budget if max_context_tokens is None else max_context_tokens
    # A decoder with a hard window (deepseek-ocr2) caps every budget: pages that do not fit are
    # faded or left out by the packer (and counted), never overflowed.
    if backend.context_limit is not None:
        budget = min(budget, backend.context_limit)
    with ctx.session() as s:
        ready = [p for p in repo.ready_pages(s, collection) if p.encoded_version]
        s.expunge_all()
    pages = [p for p in ready if p.encoded_version == backend.version]
    others = sorted({p.encoded_version for p in ready} - {backend.version}, key=str)
    if not pages and others:
        raise OtherModelVersion(
            f"the {len(ready)} ready pages of collection {collection!r} are encoded for model "
            f"version {', '.join(map(str, others))}, and this server runs {backend.version}: "
            "restart it with the weights the catalog serves (/healthz with the admin key)"
        )
    if not pages:
        raise EmptyCollection(f"collection {collection!r} has no ready pages yet")

    # Newer documents rank higher; within a document, pages keep their order. A page's text tier
    # costs what its text costs; a page without text (a scan) has no text tier.
    candidates = [
        Candidate(
            key=i,
            recency=p.document.created_at.timestamp() + p.number * 1e-6,
            text_tokens=backend.text_tokens(p.text) if p.text.strip() else None,
            pinned=p.document.pinned,
        )
        for i, p in enumerate(pages)
    ]
    packing = pack(candidates, backend.tier_tokens, budget)
    if not packing.chosen:
        raise BudgetTooSmall(
            f"a budget of {budget} tokens holds no page (the cheapest tier costs "
            f"{min(backend.tier_tokens.values())} tokens a page); raise max_context_tokens"
        )
    context = [_context_page(ctx, pages[i], backend.version, tier) for i, tier in packing.chosen]
    return Question(
        text=question,
        context=context,
        tokens=packing.tokens,
        tiers=packing.tiers,
        left_out_pages=[(pages[i].document_id, pages[i].number) for i in packing.left_out],
        other_version=len(ready) - len(pages),
        max_citations=max_citations,
        started=started,
    )


def answer(ctx: Context, question: Question) -> AskResult:
    """The model's answer to a prepared question, whole."""
    with ctx.model_lock:
        return _result(ctx, question, ctx.backend.answer(question.text, question.context))


def stream(ctx: Context, question: Question) -> Generator[str, None, AskResult]:
    """The model's answer to a prepared question, piece by piece as the backend produces it
    (Backend.answer_stream); returns the whole result, the same ``answer`` gives. Holds the
    model from the first piece to the last: run it to its end, or close it, in one thread."""
    with ctx.model_lock:
        got = yield from ctx.backend.answer_stream(question.text, question.context)
        return _result(ctx, question, got)


def _result(ctx: Context, question: Question, answer: Answer) -> AskResult:
    context = question.context
    ranked = sorted(
        zip(context, answer.page_scores, strict=True), key=lambda cs: cs[1], reverse=True
    )
    # An answer that was not found cites nothing: no page supports it.
    citations = [
        Citation(c.document_id, c.page, round(float(score), 4), c.tier)
        for c, score in ranked[: question.max_citations]
        if score > 0 and answer.found
    ]
    metrics.ASK_SECONDS.observe(time.monotonic() - question.started)
    metrics.ASK_CONTEXT_TOKENS.observe(question.tokens)
    return AskResult(
        answer=answer.text,
        citations=citations,
        pages=len(context),
        tokens=question.tokens,
        tiers=question.tiers,
        left_out=len(question.left_out_pages),
        left_out_pages=question.left_out_pages,
        model_version=ctx.backend.version,
        other_version=question.other_version,
        found=answer.found,
    )


def _context_page(ctx: Context, p: Page, version: str, tier: str) -> ContextPage:
    """A page as the model sees it at one tier: the cached tensors (the text tier's too, where
    the backend caches any) and, at the text tier, the page's text."""
    if tier == TEXT:
        tensors = None
        if ctx.tensors.exists(version, TEXT, p.content_hash):  # else the backend computes them
            tensors = ctx.tensors.get(version, TEXT, p.content_hash)
        return ContextPage(p.document_id, p.number, _label(p), TEXT, tensors=tensors, text=p.text)
    tensors = ctx.tensors.get(version, tier, p.content_hash)
    return ContextPage(p.document_id, p.number, _label(p), tier, tensors=tensors)


def read_page(
    ctx: Context, document_id: str, number: int, tier: str, max_new_tokens: int = 4096
) -> str:
    """What the model reads back from one page at one tier (the text tier is the page's text);
    a read-back stops at ``max_new_tokens`` generated tokens (bytes for the reference model)."""
    backend = ctx.backend
    with ctx.session() as s:
        page = repo.get_page(s, document_id, number)
        if page is None:
            raise LookupError(f"document {document_id} has no page {number}")
        s.expunge(page)
    if tier == TEXT:
        return page.text
    if tier not in backend.tier_tokens:
        raise ValueError(
            f"unknown tier {tier!r}; expected one of {', '.join([TEXT, *backend.tier_tokens])}"
        )
    version = backend.version
    if page.encoded_version not in (None, version):
        raise PageNotReady(
            f"page {number} of document {document_id} is encoded for model version "
            f"{page.encoded_version}; this server runs {version}"
        )
    if not ctx.tensors.exists(version, tier, page.content_hash):
        raise PageNotReady(f"page {number} of document {document_id} is not encoded yet")
    tensors = ctx.tensors.get(version, tier, page.content_hash)
    with ctx.model_lock:
        page_ = ContextPage(document_id, number, "", tier, tensors=tensors)
        return backend.read_page(page_, max_new_tokens)
