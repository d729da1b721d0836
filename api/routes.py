"""The v1 HTTP contract (design.md). Handlers are plain `def`: FastAPI runs them in its thread
pool, so model calls and file I/O never block the event loop."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile, status
from sqlalchemy import text

import ingest
from api.deps import Admin, CtxDep, User
from api.schemas import (
    AskIn,
    AskOut,
    CitationOut,
    ContextOut,
    DocumentAccepted,
    DocumentList,
    DocumentOut,
    DocumentPatch,
    Health,
    JobAccepted,
    JobOut,
    PageText,
    ReindexIn,
)
from kb import objects, reader
from kb.catalog import repo
from kb.catalog.models import Document, new_id
from kb.pipeline import original_key
from workers.celery_app import app as celery

log = logging.getLogger(__name__)
router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[User])
admin = APIRouter(prefix="/v1/admin", dependencies=[Admin])

COPY_CHUNK = 1 << 20


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


@router.get("/healthz", response_model=Health, tags=["health"])
def healthz(ctx: CtxDep, response: Response) -> Health:
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
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"broker": "redis"}

    def store() -> dict[str, str]:
        ctx.store.ping()
        return {"backend": type(ctx.store).__name__}

    backend = ctx.backend
    result = Health(
        status="ok",
        queue=check(queue),
        store=check(store),
        catalog=check(catalog),
        model={
            "status": "ok",
            "name": backend.name,
            "version": backend.version,
            "trained": backend.trained,
            "context_budget": backend.context_budget,
        },
    )
    if any(part["status"] != "ok" for part in (result.queue, result.store, result.catalog)):
        result.status = "degraded"
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return result


@v1.post(
    "/documents",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DocumentAccepted,
    responses={200: {"model": DocumentAccepted, "description": "already uploaded"}},
)
def upload_document(
    ctx: CtxDep,
    response: Response,
    file: Annotated[UploadFile, File(description="the document")],
    collection: Annotated[str, Form(min_length=1, max_length=100)] = "default",
) -> DocumentAccepted:
    try:
        filename = ingest.safe_filename(file.filename or "")
    except ingest.IngestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    limit = ctx.settings.max_upload_mb << 20
    with tempfile.TemporaryDirectory(prefix="kb-upload-") as tmp:
        path = Path(tmp) / "upload"
        digest, size = hashlib.sha256(), 0
        with path.open("wb") as out:
            while chunk := file.file.read(COPY_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE,
                        f"file is larger than the {ctx.settings.max_upload_mb} MB limit",
                    )
                digest.update(chunk)
                out.write(chunk)
        with path.open("rb") as f:
            head = f.read(4096)
        try:
            ext = ingest.check_upload(filename, head)
        except ingest.UnsupportedFormat as exc:
            raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(exc)) from exc
        except ingest.IngestError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc

        sha = digest.hexdigest()
        with ctx.session() as s:
            existing = repo.find_document_by_sha256(s, collection, sha)
            if existing is not None:
                response.status_code = status.HTTP_200_OK
                return DocumentAccepted(id=existing.id, status=existing.status, duplicate=True)  # type: ignore[arg-type]

        doc_id = new_id()
        key = original_key(doc_id, filename)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        ctx.store.put_file(key, path, content_type)
    try:
        with ctx.session() as s:
            repo.create_document(
                s,
                collection=collection,
                filename=filename,
                content_type=content_type,
                size_bytes=size,
                sha256=sha,
                original_key=key,
                document_id=doc_id,
            )
    except Exception:
        ctx.store.delete(key)  # no orphaned original
        raise
    celery.send_task("ingest.render", args=[doc_id])
    log.info("queued %s (%s, %d bytes, %s)", doc_id, filename, size, ext)
    return DocumentAccepted(id=doc_id, status="queued")


@v1.get("/documents", response_model=DocumentList)
def list_documents(
    ctx: CtxDep, collection: Annotated[str | None, Query(min_length=1, max_length=100)] = None
) -> DocumentList:
    with ctx.session() as s:
        return DocumentList(documents=[_doc_out(d) for d in repo.list_documents(s, collection)])


@v1.get("/documents/{document_id}", response_model=DocumentOut)
def get_document(ctx: CtxDep, document_id: str) -> DocumentOut:
    with ctx.session() as s:
        doc = repo.get_document(s, document_id)
        if doc is None:
            raise _not_found("document")
        return _doc_out(doc)


@v1.patch("/documents/{document_id}", response_model=DocumentOut)
def patch_document(ctx: CtxDep, document_id: str, body: DocumentPatch) -> DocumentOut:
    """Pin a document (its pages keep the exact text tier first) or unpin it."""
    with ctx.session() as s:
        if not repo.set_pinned(s, document_id, body.pinned):
            raise _not_found("document")
    with ctx.session() as s:
        doc = repo.get_document(s, document_id)
        if doc is None:
            raise _not_found("document")
        return _doc_out(doc)


@v1.delete("/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_document(ctx: CtxDep, document_id: str) -> Response:
    """The document, its original, and its page images and tensors that no other page shares."""
    if not objects.delete_document(ctx, document_id):
        raise _not_found("document")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _page(ctx: CtxDep, document_id: str, n: int):
    if n < 1:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "pages are numbered from 1")
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
    responses={200: {"content": {"image/png": {}}}},
)
def page_image(ctx: CtxDep, document_id: str, n: int) -> Response:
    page = _page(ctx, document_id, n)
    return Response(ctx.store.get(page.image_key), media_type="image/png")


@v1.get("/documents/{document_id}/pages/{n}/text", response_model=PageText)
def page_text(
    ctx: CtxDep,
    document_id: str,
    n: int,
    tier: str = "base",
    max_bytes: Annotated[int, Query(ge=1, le=16384)] = 4096,
) -> PageText:
    """``max_bytes``: where a vision-tier read-back stops (the text tier is returned whole)."""
    _page(ctx, document_id, n)
    try:
        text_ = reader.read_page(ctx, document_id, n, tier, max_bytes)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except reader.PageNotReady as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return PageText(
        document_id=document_id, page=n, tier=tier, text=text_, model=ctx.backend.version
    )


@v1.post("/ask", response_model=AskOut)
def ask(ctx: CtxDep, body: AskIn) -> AskOut:
    try:
        result = reader.ask(ctx, body.question, body.collection, body.max_context_tokens)
    except reader.EmptyCollection as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except reader.BudgetTooSmall as exc:
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


@admin.post("/reindex", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def reindex(ctx: CtxDep, body: ReindexIn | None = None) -> JobAccepted:
    collection = body.collection if body else None
    with ctx.session() as s:
        if collection is not None and repo.get_collection(s, collection) is None:
            raise _not_found(f"collection {collection!r}")
        job = repo.create_job(s, model_version=ctx.backend.version, collection=collection)
        job_id = job.id
    celery.send_task("admin.reindex", args=[job_id])
    return JobAccepted(job_id=job_id)


@admin.get("/jobs/{job_id}", response_model=JobOut)
def get_job(ctx: CtxDep, job_id: str) -> JobOut:
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
