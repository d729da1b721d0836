"""What comes in and what goes out: separate models, so no internal field leaks into a response."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DocStatus = Literal["queued", "processing", "ready", "failed"]


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
    collection: str = Field("default", min_length=1, max_length=100)
    max_context_tokens: int | None = Field(None, ge=1, le=10_000_000)


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

    collection: str | None = Field(None, min_length=1, max_length=100)


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


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    queue: dict[str, str]
    store: dict[str, str]
    catalog: dict[str, str]
    model: dict[str, str | bool | int]
