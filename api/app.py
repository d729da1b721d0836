"""The FastAPI app: built once, with the core's context made in the lifespan."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import web
from api.limits import BodyLimits
from api.routes import FILES_PER_REQUEST, admin, admin_metrics, router, v1
from kb import serving
from kb.context import Context
from kb.metrics import WorkerMetrics
from kb.queue import QueueUnavailable, TaskQueue
from kb.settings import Settings, get_settings
from kb.store import StoreUnavailable

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, queue: TaskQueue | None = None) -> FastAPI:
    """The app; `queue` is where uploads and jobs are sent (default: the Celery broker at
    KB_REDIS_URL, connected to only when the app starts)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = Context(settings)
        app.state.ctx = ctx
        if queue is not None:
            app.state.queue = queue
        else:
            from workers.queue import CeleryQueue  # needs KB_REDIS_URL: not at import time

            app.state.queue = CeleryQueue()
        # What the workers count, added up in Redis (kb.metrics); none without a broker.
        app.state.worker_metrics = (
            WorkerMetrics(redis.Redis.from_url(settings.redis_url, socket_timeout=2))
            if settings.redis_url
            else None
        )
        app.state.api_key = settings.key("api")
        app.state.admin_key = settings.key("admin")
        app.state.model_slots = threading.BoundedSemaphore(settings.max_asks_in_flight)
        ctx.backend  # noqa: B018 - load the model at start, not on the first question
        serving.claim(ctx)  # an empty catalog serves the version of the first process
        yield
        ctx.close()

    app = FastAPI(
        title="Optical-memory knowledge base",
        version="1",
        description=(
            "Upload documents, ask questions over the whole corpus at once. Every error is "
            '`{"detail": "..."}` with a real status code. Limits: one file per upload request '
            f"(at most {FILES_PER_REQUEST}; more are refused with 422), bodies up to "
            f"KB_MAX_UPLOAD_MB ({settings.max_upload_mb} MB; 413 as soon as it is passed), a "
            f"body that stalls for KB_BODY_READ_TIMEOUT_S ({settings.body_read_timeout_s:g} s) "
            "gets 408, and beyond KB_MAX_ASKS_IN_FLIGHT "
            f"({settings.max_asks_in_flight}) questions at once 429 with Retry-After."
        ),
        lifespan=lifespan,
        docs_url=None,  # served by api.web from local files: the default loads them from a CDN
        redoc_url=None,  # ReDoc, too, would come from a CDN; /docs is the OpenAPI page
    )
    app.add_middleware(
        BodyLimits,
        max_upload_mb=settings.max_upload_mb,
        read_timeout_s=settings.body_read_timeout_s,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return JSONResponse(
            {"detail": problems or "invalid request"},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    def unavailable(exc_type: type[Exception], what: str, detail: str) -> None:
        """A dependency that is down answers 503 with ``detail``; the cause goes to the log."""

        async def handler(request: Request, exc: Exception) -> JSONResponse:
            log.error("%s unavailable on %s %s: %s", what, request.method, request.url.path, exc)
            return JSONResponse({"detail": detail}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

        app.add_exception_handler(exc_type, handler)

    unavailable(
        StoreUnavailable, "object store", "the object store is unavailable; try again later"
    )
    unavailable(
        QueueUnavailable,
        "queue",
        "the queue is unavailable, so nothing was stored; try again later",
    )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": "internal server error"},
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    app.include_router(router)
    app.include_router(v1)
    app.include_router(admin)
    app.include_router(admin_metrics)
    web.mount(app)  # the web page at / and /docs
    return app


app = create_app()
