"""Request dependencies as Annotated aliases, so handlers stay short."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kb.context import Context

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def _check(creds: HTTPAuthorizationCredentials | None, keys: list[str]) -> None:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = creds.credentials.encode()
    if not any(secrets.compare_digest(given, k.encode()) for k in keys):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )


def require_user(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    # The admin key is a superset: an administrator can use every user route too.
    _check(creds, [request.app.state.api_key, request.app.state.admin_key])


def require_admin(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    if creds is not None and secrets.compare_digest(
        creds.credentials.encode(), request.app.state.api_key.encode()
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route needs the admin key")
    _check(creds, [request.app.state.admin_key])


CtxDep = Annotated[Context, Depends(get_ctx)]
User = Depends(require_user)
Admin = Depends(require_admin)
