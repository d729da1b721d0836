"""What comes in and what goes out: separate models, so no internal field leaks into a response."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from kb import apikeys
from kb.catalog.repo import COLLECTION_NAME_MAX, COLLECTION_NAME_PATTERN
from kb.jobs import MODEL_VERSION_PATTERN

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

    pinned: StrictBool  # true or false: "yes", 1 or "false" are refused, not guessed at


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
    stream: bool = Field(
        False,
        description='true: answer text/event-stream, a `piece` event ({"text"}) per piece of '
        "the answer as the model produces it, then one `final` event with the whole answer "
        'as the non-streaming form gives it (or an `error` event, {"detail"}).',
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
    # Ready pages encoded for another model version than the server's: not packed (a reindex
    # to another version switched them; /healthz with the admin key says which it serves).
    other_version: int = 0


class AskOut(BaseModel):
    answer: str
    found: bool  # False: the collection holds no answer, and the answer says so
    citations: list[CitationOut]
    context: ContextOut
    model: str


class ReindexIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionName | None = Field(
        None, description="Default: every collection (required for another model version)."
    )
    model_version: Annotated[str, StringConstraints(pattern=MODEL_VERSION_PATTERN)] | None = Field(
        None,
        description="The version to re-encode for; only workers running it take the job. "
        "Default: the version this server runs.",
    )


class JobAccepted(BaseModel):
    job_id: str
    duplicate: bool = False  # an identical job was already queued or running: this is it


class JobOut(BaseModel):
    id: str
    # done: its pages switched to model_version, which the catalog now serves
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    done: int  # pages re-encoded (a recount)
    total: int
    collection: str | None
    model_version: str  # the version it re-encodes for
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


class CollectionOut(BaseModel):
    name: str
    documents: int  # in any state
    pages: int  # rendered so far


class CollectionList(BaseModel):
    collections: list[CollectionOut]


KeyName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=apikeys.NAME_MAX, pattern=COLLECTION_NAME_PATTERN),
]


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName
    collections: list[CollectionName] = Field(
        min_length=1,
        max_length=apikeys.MAX_COLLECTIONS,
        description="The collections the key may use, and nothing else; they need not exist "
        "yet (a collection is made by its first upload).",
    )


class ApiKeyOut(BaseModel):
    """A key as it is listed: never its secret."""

    id: str
    name: str
    collections: list[str]
    created_at: str


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself, shown this once: only its hash is kept.")


class ApiKeyList(BaseModel):
    keys: list[ApiKeyOut]


class Health(BaseModel):
    """Without the admin key only `status`; the parts (hosts, errors, model) are for the admin."""

    status: Literal["ok", "degraded"]
    queue: dict[str, str | int] | None = None  # + depth: tasks waiting for a worker
    workers: dict[str, str | int | float] | None = None  # alive, within_s, last_heard_s
    store: dict[str, str] | None = None
    catalog: dict[str, str] | None = None
    model: dict[str, str | bool | int] | None = None
