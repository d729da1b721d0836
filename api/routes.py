"""The v1 HTTP contract (design.md). Handlers are plain `def`: FastAPI runs them in its thread
pool, so model calls and file I/O never block the event loop."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)
from sqlalchemy import text
from starlette.datastructures import UploadFile as FormFile

import ingest
from api.deps import Admin, AdminKey, CtxDep, ModelSlot, QueueDep, User
from api.schemas import (
    AskIn,
    AskOut,
    CitationOut,
    CollectionName,
    ContextOut,
    DocumentAccepted,
    DocumentList,
    DocumentOut,
    DocumentPatch,
    ErrorOut,
    Health,
    JobAccepted,
    JobOut,
    PageText,
    ReindexIn,
)
from kb import documents, jobs, objects, reader
from kb.catalog import repo
from kb.catalog.models import Document

log = logging.getLogger(__name__)

FILES_PER_REQUEST = 1  # each upload is one document; more files in one request: 422

# What each error status means here; every route lists the ones it can answer (OpenAPI), with
# the body every error has: {"detail": "..."}.
_ERRORS = {
    400: "the body cannot be parsed: malformed multipart, or JSON that is not UTF-8",
    401: "missing or invalid API key",
    403: "this route needs the admin key",
    404: "not found",
    408: "the request body stalled for longer than KB_BODY_READ_TIMEOUT_S; the connection is "
    "closed",
    409: "the page is not encoded yet",
    413: "the body is larger than KB_MAX_UPLOAD_MB; refused as soon as the limit is passed",
    415: "unsupported file type, or contents that do not match the extension",
    422: "invalid input; `detail` says which field and why",
    429: "too many questions in flight (KB_MAX_ASKS_IN_FLIGHT); retry after Retry-After seconds",
    503: "the object store or the queue is unavailable (nothing was stored); try again later",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        code: {
            "model": ErrorOut,
            "description": _ERRORS[code],
            **({"headers": _RETRY_AFTER} if code == 429 else {}),
        }
        for code in codes
    }


BODY_ERRORS = (400, 408, 413, 422)  # any route that reads a body

router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[User], responses=errors(401, 422))
admin = APIRouter(prefix="/v1/admin", dependencies=[Admin], responses=errors(401, 403, 422))

# Ids are UUIDs (kb.catalog.models.new_id); anything else is simply not found, and never reaches
# the database (PostgreSQL refuses NUL in text with an error, not an empty result).
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PageNumber = Annotated[int, Path(ge=1, le=repo.PAGE_NUMBER_MAX, description="1-based")]


def _doc_out(doc: Document) -> DocumentOut:
    return DocumentOut(
        id=doc.id,
        filename=doc.filename,
        collection=doc.collection.name,
        status=doc.status,  # type: ignore[arg-type]
        pages=doc.pages_total,
        pages_done=doc.pages_done,
        error=doc.error,
        created_at=doc.created_at.isoformat(),
        pinned=doc.pinned,
    )


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def _check_id(value: str, what: str) -> str:
    if not _ID.fullmatch(value):
        raise _not_found(what)
    return value


@router.get(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    tags=["health"],
    responses={503: {"model": Health, "description": "a part is down: status degraded"}},
)
def healthz(ctx: CtxDep, queue_: QueueDep, response: Response, admin_key: AdminKey) -> Health:
    """`ok` or `degraded` for anyone (a load balancer needs no key); with the admin key, each
    part's state and errors and the model. Never waits on the model."""

    def check(fn) -> dict[str, str]:
        try:
            detail = fn()
            return {"status": "ok", **(detail or {})}
        except Exception as exc:  # a health check reports, it does not raise
            return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}

    def catalog() -> dict[str, str]:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"backend": ctx.engine.dialect.name}

    def queue() -> dict[str, str]:
        queue_.ping()
        return {"broker": "redis"}

    def store() -> dict[str, str]:
        ctx.store.ping()
        return {"backend": type(ctx.store).__name__}

    parts = {"queue": check(queue), "store": check(store), "catalog": check(catalog)}
    ok = all(part["status"] == "ok" for part in parts.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    if not admin_key:
        return Health(status="ok" if ok else "degraded")
    backend = ctx.backend  # loaded in the lifespan: no lock is taken here
    return Health(
        status="ok" if ok else "degraded",
        **parts,
        model={
            "status": "ok",
            "name": backend.name,
            "version": backend.version,
            "trained": backend.trained,
            "context_budget": backend.context_budget,
        },
    )


async def _one_file(request: Request) -> None:
    """Refuse a request with more than FILES_PER_REQUEST files (FastAPI would keep the last)."""
    form = await request.form()  # already parsed for the handler: this reads the cached form
    files = sum(isinstance(value, FormFile) for _, value in form.multi_items())
    if files > FILES_PER_REQUEST:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"one file per request, this one has {files}; upload each document in its own request",
        )


@v1.post(
    "/documents",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DocumentAccepted,
    responses={
        200: {"model": DocumentAccepted, "description": "already uploaded"},
        **errors(*BODY_ERRORS, 415, 503),
    },
    dependencies=[Depends(_one_file)],
)
def upload_document(
    ctx: CtxDep,
    queue: QueueDep,
    response: Response,
    file: Annotated[UploadFile, File(description="the document")],
    collection: Annotated[CollectionName, Form()] = "default",
) -> DocumentAccepted:
    """Upload one document (one file per request: more are refused with 422). The same bytes
    uploaded again to the same collection, even at the same moment, give the one document
    (200, `duplicate: true`); if that document failed or its progress stalled, it is processed
    again (202, `duplicate: true`). When the queue cannot take the work: 503, nothing stored."""
    # The body was already refused past the limit while it streamed in (api.limits); staging
    # counts the file alone, without the multipart framing.
    with tempfile.TemporaryDirectory(prefix="kb-upload-") as tmp:
        try:
            staged = documents.stage(
                file.file,
                file.filename or "",
                FilePath(tmp) / "upload",
                ctx.settings.max_upload_mb << 20,
            )
        except documents.UploadTooLarge as exc:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
        except ingest.UnsupportedFormat as exc:
            raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(exc)) from exc
        except ingest.IngestError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        accepted = documents.upload(ctx, queue, staged, collection)
    if not accepted.queued:
        response.status_code = status.HTTP_200_OK
    return DocumentAccepted(
        id=accepted.id,
        status=accepted.status,  # type: ignore[arg-type]
        duplicate=accepted.duplicate,
    )


@v1.get("/documents", response_model=DocumentList, responses=errors(422))
def list_documents(
    ctx: CtxDep, collection: Annotated[CollectionName | None, Query()] = None
) -> DocumentList:
    with ctx.session() as s:
        return DocumentList(documents=[_doc_out(d) for d in repo.list_documents(s, collection)])


@v1.get("/documents/{document_id}", response_model=DocumentOut, responses=errors(404))
def get_document(ctx: CtxDep, document_id: str) -> DocumentOut:
    _check_id(document_id, "document")
    with ctx.session() as s:
        doc = repo.get_document(s, document_id)
        if doc is None:
            raise _not_found("document")
        return _doc_out(doc)


@v1.patch(
    "/documents/{document_id}", response_model=DocumentOut, responses=errors(404, *BODY_ERRORS)
)
def patch_document(ctx: CtxDep, document_id: str, body: DocumentPatch) -> DocumentOut:
    """Pin a document (its pages keep the exact text tier first) or unpin it."""
    _check_id(document_id, "document")
    with ctx.session() as s:
        if not repo.set_pinned(s, document_id, body.pinned):
            raise _not_found("document")
    with ctx.session() as s:
        doc = repo.get_document(s, document_id)
        if doc is None:
            raise _not_found("document")
        return _doc_out(doc)


@v1.delete(
    "/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404)
)
def delete_document(ctx: CtxDep, document_id: str) -> Response:
    """The document, its original, and its page images and tensors that no other page shares."""
    _check_id(document_id, "document")
    if not objects.delete_document(ctx, document_id):
        raise _not_found("document")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _page(ctx: CtxDep, document_id: str, n: int):
    _check_id(document_id, "document")
    with ctx.session() as s:
        if repo.get_document(s, document_id) is None:
            raise _not_found("document")
        page = repo.get_page(s, document_id, n)
        if page is None:
            raise _not_found(f"page {n}")
        s.expunge(page)
    return page


@v1.get(
    "/documents/{document_id}/pages/{n}/image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **errors(404, 422)},
)
def page_image(ctx: CtxDep, document_id: str, n: PageNumber) -> Response:
    page = _page(ctx, document_id, n)
    return Response(ctx.store.get(page.image_key), media_type="image/png")


@v1.get(
    "/documents/{document_id}/pages/{n}/text",
    response_model=PageText,
    responses=errors(404, 409, 422, 429),
    dependencies=[ModelSlot],
)
def page_text(
    ctx: CtxDep,
    document_id: str,
    n: PageNumber,
    tier: Annotated[str, Query(max_length=16)] = "base",
    max_bytes: Annotated[int, Query(ge=1, le=16384)] = 4096,
) -> PageText:
    """``max_bytes``: where a vision-tier read-back stops (the text tier is returned whole)."""
    page = _page(ctx, document_id, n)
    try:
        text_ = reader.read_page(ctx, document_id, n, tier, max_bytes)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except reader.PageNotReady as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return PageText(
        document_id=document_id,
        page=n,
        tier=tier,
        text=text_,
        model=ctx.backend.version,
        text_source=page.text_source,
    )


@v1.post(
    "/ask",
    response_model=AskOut,
    responses=errors(404, *BODY_ERRORS, 429),
    dependencies=[ModelSlot],
)
def ask(ctx: CtxDep, body: AskIn) -> AskOut:
    """Answer from every ready page of the collection. Beyond KB_MAX_ASKS_IN_FLIGHT questions
    at once: 429 with Retry-After, at once."""
    try:
        result = reader.ask(ctx, body.question, body.collection, body.max_context_tokens)
    except reader.EmptyCollection as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except (reader.BudgetTooSmall, reader.BudgetTooLarge) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return AskOut(
        answer=result.answer,
        found=result.found,
        citations=[CitationOut(**c.__dict__) for c in result.citations],
        context=ContextOut(
            pages=result.pages, tokens=result.tokens, tiers=result.tiers, left_out=result.left_out
        ),
        model=result.model_version,
    )


@admin.post(
    "/reindex",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=errors(404, *BODY_ERRORS, 503),
)
def reindex(ctx: CtxDep, queue: QueueDep, body: ReindexIn | None = None) -> JobAccepted:
    try:
        job_id = jobs.start_reindex(ctx, queue, body.collection if body else None)
    except jobs.CollectionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return JobAccepted(job_id=job_id)


@admin.get("/jobs/{job_id}", response_model=JobOut, responses=errors(404))
def get_job(ctx: CtxDep, job_id: str) -> JobOut:
    _check_id(job_id, "job")
    with ctx.session() as s:
        job = repo.get_job(s, job_id)
        if job is None:
            raise _not_found("job")
        return JobOut(
            id=job.id,
            status=job.status,  # type: ignore[arg-type]
            done=job.done,
            total=job.total,
            collection=job.collection.name if job.collection else None,
            model_version=job.model_version,
            error=job.error,
        )
