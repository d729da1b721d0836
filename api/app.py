"""The FastAPI app: built once, with the core's context made in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.routes import admin, router, v1
from kb.context import Context
from kb.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = Context(settings)
        app.state.ctx = ctx
        app.state.api_key = settings.key("api")
        app.state.admin_key = settings.key("admin")
        ctx.backend  # noqa: B018 - load the model at start, not on the first question
        yield
        ctx.close()

    app = FastAPI(
        title="Optical-memory knowledge base",
        version="1",
        description="Upload documents, ask questions over the whole corpus at once.",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def refuse_oversized(request: Request, call_next):  # type: ignore[no-untyped-def]
        # Refuse before the body is read when the client declares it; the upload handler
        # still counts the bytes it receives, for clients that don't.
        length = request.headers.get("content-length")
        limit = (settings.max_upload_mb << 20) + (1 << 20)  # + room for the multipart framing
        if length and length.isdigit() and int(length) > limit:
            return JSONResponse(
                {"detail": f"file is larger than the {settings.max_upload_mb} MB limit"},
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            )
        return await call_next(request)

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
    return app


app = create_app()
