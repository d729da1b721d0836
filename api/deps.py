"""Request dependencies as Annotated aliases, so handlers stay short."""

from __future__ import annotations

import secrets
import threading
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kb import apikeys
from kb.apikeys import Scope
from kb.context import Context
from kb.queue import TaskQueue

RETRY_AFTER_S = 1  # a question takes about a second (docs/benchmarks.md)

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def get_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.queue
    return queue


def caller_scope(
    request: Request,
    ctx: Annotated[Context, Depends(get_ctx)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Scope:
    """What the request's key may see (kb.apikeys); 401 without a valid key."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scope = apikeys.authenticate(
        ctx,
        creds.credentials,
        api_key=request.app.state.api_key,
        admin_key=request.app.state.admin_key,
    )
    if scope is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return scope


def require_admin(scope: Annotated[Scope, Depends(caller_scope)]) -> Scope:
    if not scope.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route needs the admin key")
    return scope


def is_admin(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> bool:
    """Whether the request carries the admin key; never refuses (for open routes)."""
    return creds is not None and secrets.compare_digest(
        creds.credentials.encode(), request.app.state.admin_key.encode()
    )


async def model_slot(request: Request) -> AsyncIterator[None]:
    """A place among the questions the model can hold in flight, or 429 at once.

    Runs on the event loop and never waits: a request beyond KB_MAX_ASKS_IN_FLIGHT is answered
    before it takes a thread, so waiting questions cannot fill the thread pool and starve
    /healthz and the other routes.
    """
    slots: threading.BoundedSemaphore = request.app.state.model_slots
    if not slots.acquire(blocking=False):
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many questions in flight; try again shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    try:
        yield
    finally:
        slots.release()


CtxDep = Annotated[Context, Depends(get_ctx)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
AdminKey = Annotated[bool, Depends(is_admin)]
CallerScope = Annotated[Scope, Depends(caller_scope)]  # computed once per request
ModelSlot = Depends(model_slot)
User = Depends(caller_scope)
Admin = Depends(require_admin)
