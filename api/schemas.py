"""What comes in and what goes out: separate models, so no internal field leaks into a response."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from kb.catalog.repo import COLLECTION_NAME_MAX, COLLECTION_NAME_PATTERN

DocStatus = Literal["queued", "processing", "ready", "failed"]
CollectionName = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=COLLECTION_NAME_MAX, pattern=COLLECTION_NAME_PATTERN
    ),
]


class ErrorOut(BaseModel):
    """Every error answer: a real status code and one sentence for a person."""

    detail: str


class DocumentAccepted(BaseModel):
    id: str
    status: DocStatus
    duplicate: bool = False  # the same bytes were already uploaded to this collection


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    collection: str
    status: DocStatus
    pages: int | None  # pages in the document, once known
    pages_done: int  # pages encoded so far
    error: str | None
    created_at: str
    pinned: bool = False  # the packer keeps its pages at the exact text tier first


class DocumentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pinned: bool


class DocumentList(BaseModel):
    documents: list[DocumentOut]


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=4000)
    collection: CollectionName = "default"
    max_context_tokens: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="At most the model's context budget (65,536 tokens for the reference "
        "model; /healthz with the admin key shows model.context_budget); above it: 422. "
        "Default: that budget.",
    )


class CitationOut(BaseModel):
    document_id: str
    page: int
    score: float
    tier: str  # the tier the page was read at: "text" is its exact text, others fade


class ContextOut(BaseModel):
    pages: int  # pages packed into the context
    tokens: int  # context tokens they take
    tiers: dict[str, int]  # pages per tier, "text" (exact) included
    left_out: int  # pages that did not fit even at the cheapest tier (never silently)


class AskOut(BaseModel):
    answer: str
    found: bool  # False: the collection holds no answer, and the answer says so
    citations: list[CitationOut]
    context: ContextOut
    model: str


class ReindexIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionName | None = None


class JobAccepted(BaseModel):
    job_id: str


class JobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    done: int
    total: int
    collection: str | None
    model_version: str
    error: str | None


class PageText(BaseModel):
    document_id: str
    page: int
    tier: str
    text: str
    model: str
    # Where the page's text tier came from: the document's text layer, or OCR of a page that
    # had none (a scan, a photo). Whatever tier was read back.
    text_source: Literal["text_layer", "ocr"]


class Health(BaseModel):
    """Without the admin key only `status`; the parts (hosts, errors, model) are for the admin."""

    status: Literal["ok", "degraded"]
    queue: dict[str, str] | None = None
    store: dict[str, str] | None = None
    catalog: dict[str, str] | None = None
    model: dict[str, str | bool | int] | None = None
