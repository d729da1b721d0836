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
from fastapi.sse import EventSourceResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile as FormFile

import ingest
from api.deps import Admin, AdminKey, CallerScope, CtxDep, ModelSlot, QueueDep, User
from api.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyList,
    ApiKeyOut,
    AskIn,
    AskOut,
    CitationOut,
    CollectionList,
    CollectionName,
    CollectionOut,
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
from api.streaming import event_stream
from kb import apikeys, collections, documents, jobs, metrics, objects, reader, serving
from kb.apikeys import Scope
from kb.catalog import repo
from kb.catalog.models import Document

log = logging.getLogger(__name__)

FILES_PER_REQUEST = 1  # each upload is one document; more files in one request: 422

# What each error status means here; every route lists the ones it can answer (OpenAPI), with
# the body every error has: {"detail": "..."}.
_ERRORS = {
    400: "the body cannot be parsed: malformed multipart, or JSON that is not UTF-8",
    401: "missing or invalid API key",
    403: "this route needs the admin key, or the key may not use this collection",
    404: "not found",
    408: "the request body stalled for longer than KB_BODY_READ_TIMEOUT_S; the connection is "
    "closed",
    409: "the page is not encoded (for this server's model version) yet, or the job is "
    "already finished",
    413: "the body is larger than KB_MAX_UPLOAD_MB; refused as soon as the limit is passed",
    415: "unsupported file type, or contents that do not match the extension",
    422: "invalid input; `detail` says which field and why",
    429: "too many questions in flight (KB_MAX_ASKS_IN_FLIGHT); retry after Retry-After seconds",
    503: "the object store or the queue is unavailable (nothing was stored), or this server "
    "runs another model version than the collection's pages are encoded for",
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
admin_metrics = APIRouter(dependencies=[Admin], responses=errors(401, 403))

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


def _may_use(scope: Scope, collection: str) -> None:
    """403 unless the key may use the collection (whether it exists or not: nothing is told)."""
    if not scope.allows(collection):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this key may not use collection {collection!r}"
        )


def _visible_document(s: Session, scope: Scope, document_id: str) -> Document:
    """The document, or 404: also for another collection's document, whose existence a key
    limited to other collections is not told."""
    _check_id(document_id, "document")
    doc = repo.get_document(s, document_id)
    if doc is None or not scope.allows(doc.collection.name):
        raise _not_found("document")
    return doc


@router.get(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    tags=["health"],
    responses={
        503: {"model": Health, "description": "a part is down, or no worker is alive: degraded"}
    },
)
def healthz(ctx: CtxDep, queue_: QueueDep, response: Response, admin_key: AdminKey) -> Health:
    """`ok` or `degraded` (503) for anyone (a load balancer needs no key): degraded when a part
    is down, no worker was heard from within KB_WORKER_ALIVE_S seconds, or this server runs
    another model version than the catalog serves (its questions would leave those pages out).
    With the admin key, each part's state and errors (the queue's depth, the workers alive) and
    the model. Never waits on the model."""

    def check(fn) -> dict[str, Any]:
        try:
            detail = fn()
            return {"status": "ok", **(detail or {})}
        except Exception as exc:  # a health check reports, it does not raise
            return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}

    def catalog() -> dict[str, str]:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"backend": ctx.engine.dialect.name}

    def queue() -> dict[str, Any]:
        queue_.ping()
        return {"broker": "redis", "depth": queue_.depth()}

    def workers() -> dict[str, Any]:
        within = ctx.settings.worker_alive_s
        alive = queue_.workers()
        if not alive:
            raise NoWorker(f"no worker heard from within {within} s")
        return {"alive": len(alive), "within_s": within, "last_heard_s": min(alive.values())}

    def store() -> dict[str, str]:
        ctx.store.ping()
        return {"backend": type(ctx.store).__name__}

    def model() -> dict[str, str] | None:
        mismatch = serving.mismatch(ctx)  # the catalog serves one version (kb.serving)
        return None if mismatch is None else {"status": "error", "error": mismatch}

    parts = {
        "queue": check(queue),
        "workers": check(workers),
        "store": check(store),
        "catalog": check(catalog),
    }
    model_part = check(model)
    ok = all(part["status"] == "ok" for part in [*parts.values(), model_part])
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    if not admin_key:
        return Health(status="ok" if ok else "degraded")
    backend = ctx.backend  # loaded in the lifespan: no lock is taken here
    return Health(
        status="ok" if ok else "degraded",
        **parts,
        model={
            **model_part,
            "name": backend.name,
            "version": backend.version,
            "trained": backend.trained,
            "context_budget": backend.context_budget,
        },
    )


class NoWorker(Exception):
    """No worker has written a heartbeat within KB_WORKER_ALIVE_S."""


@admin_metrics.get(
    "/metrics",
    response_class=Response,
    tags=["health"],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics_(ctx: CtxDep, queue: QueueDep, request: Request) -> Response:
    """Prometheus text format (needs the admin key, as Prometheus's `authorization`
    credentials): uploads, ask latency and context tokens (this API process), pages rendered
    and encoded, task durations, failures and retries (every worker, kept in Redis), the
    queue's depth, the workers alive and the model. A part that cannot be read is left out."""
    backend = ctx.backend
    families = [metrics.model_info(backend.name, backend.version, backend.trained)]
    worker_metrics: metrics.WorkerMetrics | None = request.app.state.worker_metrics
    try:
        families.append(metrics.queue_depth(queue.depth()))
        families.append(metrics.workers_alive(len(queue.workers())))
        if worker_metrics is not None:
            families += worker_metrics.families()
    except Exception as exc:  # a scrape reports what it can
        log.warning("metrics: the broker does not answer: %s", exc)
    return Response(metrics.exposition(families), media_type=CONTENT_TYPE_LATEST)


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
        **errors(*BODY_ERRORS, 403, 415, 503),
    },
    dependencies=[Depends(_one_file)],
)
def upload_document(
    ctx: CtxDep,
    queue: QueueDep,
    scope: CallerScope,
    response: Response,
    file: Annotated[UploadFile, File(description="the document")],
    collection: Annotated[CollectionName, Form()] = "default",
) -> DocumentAccepted:
    """Upload one document (one file per request: more are refused with 422). The same bytes
    uploaded again to the same collection, even at the same moment, give the one document
    (200, `duplicate: true`); if that document failed or its progress stalled, it is processed
    again (202, `duplicate: true`). When the queue cannot take the work: 503, nothing stored."""
    _may_use(scope, collection)
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


@v1.get("/documents", response_model=DocumentList, responses=errors(403, 422))
def list_documents(
    ctx: CtxDep, scope: CallerScope, collection: Annotated[CollectionName | None, Query()] = None
) -> DocumentList:
    """The documents of one collection, or of every collection the key may use."""
    if collection is not None:
        _may_use(scope, collection)
    with ctx.session() as s:
        found = repo.list_documents(s, collection, within=scope.collections)
        return DocumentList(documents=[_doc_out(d) for d in found])


@v1.get("/documents/{document_id}", response_model=DocumentOut, responses=errors(404))
def get_document(ctx: CtxDep, scope: CallerScope, document_id: str) -> DocumentOut:
    with ctx.session() as s:
        return _doc_out(_visible_document(s, scope, document_id))


@v1.patch(
    "/documents/{document_id}", response_model=DocumentOut, responses=errors(404, *BODY_ERRORS)
)
def patch_document(
    ctx: CtxDep, scope: CallerScope, document_id: str, body: DocumentPatch
) -> DocumentOut:
    """Pin a document (its pages keep the exact text tier first) or unpin it."""
    with ctx.session() as s:
        _visible_document(s, scope, document_id)
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
def delete_document(ctx: CtxDep, scope: CallerScope, document_id: str) -> Response:
    """The document, its original, and its page images and tensors that no other page shares."""
    with ctx.session() as s:
        _visible_document(s, scope, document_id)
    if not objects.delete_document(ctx, document_id):
        raise _not_found("document")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _page(ctx: CtxDep, scope: Scope, document_id: str, n: int):
    with ctx.session() as s:
        _visible_document(s, scope, document_id)
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
def page_image(ctx: CtxDep, scope: CallerScope, document_id: str, n: PageNumber) -> Response:
    page = _page(ctx, scope, document_id, n)
    return Response(ctx.store.get(page.image_key), media_type="image/png")


@v1.get(
    "/documents/{document_id}/pages/{n}/text",
    response_model=PageText,
    responses=errors(404, 409, 422, 429),
    dependencies=[ModelSlot],
)
def page_text(
    ctx: CtxDep,
    scope: CallerScope,
    document_id: str,
    n: PageNumber,
    tier: Annotated[str, Query(max_length=16)] = "base",
    max_bytes: Annotated[int, Query(ge=1, le=16384)] = 4096,
) -> PageText:
    """``max_bytes``: where a vision-tier read-back stops (the text tier is returned whole)."""
    page = _page(ctx, scope, document_id, n)
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
    responses={
        200: {
            "description": "the answer; with `stream: true`, server-sent events: `piece` "
            'events (data {"text"}) as the model produces the answer, then one `final` event '
            '(data: this answer) or one `error` event (data {"detail"})',
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors(403, 404, *BODY_ERRORS, 429, 503),
    },
    dependencies=[ModelSlot],
)
def ask(ctx: CtxDep, scope: CallerScope, body: AskIn) -> AskOut | EventSourceResponse:
    """Answer from every ready page of the collection; `stream: true` streams it as it is
    generated (every error status comes before the stream starts). Beyond
    KB_MAX_ASKS_IN_FLIGHT questions at once: 429 with Retry-After, at once."""
    _may_use(scope, body.collection)
    try:
        question = reader.prepare(ctx, body.question, body.collection, body.max_context_tokens)
    except reader.EmptyCollection as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except (reader.BudgetTooSmall, reader.BudgetTooLarge) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except reader.OtherModelVersion as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    if body.stream:  # the model runs off the event loop, in one thread (api.streaming)
        return event_stream(reader.stream(ctx, question), _ask_out)
    return _ask_out(reader.answer(ctx, question))


def _ask_out(result: reader.AskResult) -> AskOut:
    return AskOut(
        answer=result.answer,
        found=result.found,
        citations=[CitationOut(**c.__dict__) for c in result.citations],
        context=ContextOut(
            pages=result.pages,
            tokens=result.tokens,
            tiers=result.tiers,
            left_out=result.left_out,
            other_version=result.other_version,
        ),
        model=result.model_version,
    )


@admin.post(
    "/reindex",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses={
        200: {"model": JobAccepted, "description": "an identical job is already queued or running"},
        **errors(404, *BODY_ERRORS, 503),
    },
)
def reindex(
    ctx: CtxDep, queue: QueueDep, response: Response, body: ReindexIn | None = None
) -> JobAccepted:
    """Re-encode the pages of a collection (default: every one) for a model version (default:
    the one this server runs); they switch to it together when all are done, and the catalog
    then serves that version. An identical job already queued or running is returned (200,
    `duplicate: true`) instead of a second one."""
    body = body or ReindexIn()
    try:
        started = jobs.start_reindex(ctx, queue, body.collection, body.model_version)
    except jobs.CollectionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ValueError as exc:  # WholeCatalogOnly
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    if not started.created:
        response.status_code = status.HTTP_200_OK
    return JobAccepted(job_id=started.job_id, duplicate=not started.created)


def _job_out(ctx: CtxDep, job_id: str) -> JobOut:
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


@admin.get("/jobs/{job_id}", response_model=JobOut, responses=errors(404))
def get_job(ctx: CtxDep, job_id: str) -> JobOut:
    return _job_out(ctx, job_id)


@admin.delete("/jobs/{job_id}", response_model=JobOut, responses=errors(404, 409))
def cancel_job(ctx: CtxDep, job_id: str) -> JobOut:
    """Cancel a queued or running job (409 if it is already done, failed or cancelled): its
    pages keep the version they serve, and the tensors it wrote that nothing serves are
    removed. The cancelled job is returned."""
    _check_id(job_id, "job")
    try:
        jobs.cancel(ctx, job_id)
    except jobs.JobNotFound as exc:
        raise _not_found("job") from exc
    except jobs.JobFinished as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return _job_out(ctx, job_id)


@v1.get("/collections", response_model=CollectionList)
def list_collections(ctx: CtxDep, scope: CallerScope) -> CollectionList:
    """The collections the key may use, with their documents and pages; a key limited to some
    collections also sees those that have no document yet, empty."""
    return CollectionList(
        collections=[CollectionOut(**vars(c)) for c in collections.visible(ctx, scope.collections)]
    )


@v1.delete(
    "/collections/{name:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(403, 404),
    dependencies=[Admin],
)
def delete_collection(ctx: CtxDep, name: CollectionName) -> Response:
    """Admin: delete the collection and every document in it, as DELETE /v1/documents/{id}
    deletes one (original, page images and tensors that no other page shares), and its jobs.
    Keys limited to it keep it: an upload makes it again."""
    if not collections.delete(ctx, name):
        raise _not_found("collection")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _key_out(info: apikeys.KeyInfo) -> ApiKeyOut:
    return ApiKeyOut(
        id=info.id,
        name=info.name,
        collections=info.collections,
        created_at=info.created_at.isoformat(),
    )


@admin.post(
    "/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=errors(*BODY_ERRORS),
)
def create_key(ctx: CtxDep, body: ApiKeyIn) -> ApiKeyCreated:
    """A key that may use these collections and nothing else. The key is in this answer only:
    the service keeps its hash."""
    try:
        made = apikeys.create(ctx, body.name, body.collections)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return ApiKeyCreated(**_key_out(made.info).model_dump(), key=made.key)


@admin.get("/keys", response_model=ApiKeyList)
def list_keys(ctx: CtxDep) -> ApiKeyList:
    """Every key made here, oldest first, without its secret (KB_API_KEY and KB_ADMIN_KEY are
    settings, not listed)."""
    return ApiKeyList(keys=[_key_out(k) for k in apikeys.list_keys(ctx)])


@admin.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404))
def revoke_key(ctx: CtxDep, key_id: str) -> Response:
    """Revoke a key: the next request with it gets 401."""
    _check_id(key_id, "key")
    if not apikeys.revoke(ctx, key_id):
        raise _not_found("key")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
