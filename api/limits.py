"""Bounds on every request body, enforced while it streams in (an ASGI middleware).

FastAPI spools a multipart upload to disk before the handler sees a byte, so a size check in the
handler comes after the disk is already full, and a body that never arrives holds its connection
forever. This middleware sits under the app and counts bytes as the body is received:

- a declared Content-Length over the limit is refused with 413 before anything is read;
- a body (chunked or not) that passes the limit is refused with 413 at that chunk, so at most
  the limit (plus one chunk) is ever buffered or spooled;
- a body that stalls for ``read_timeout_s`` between two chunks is refused with 408.

Both refusals close the connection (``Connection: close``): the rest of the body is never read.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPART_ROOM = 1 << 20  # the multipart framing around a file of exactly the limit


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_upload_mb: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_upload_mb = max_upload_mb
        self.max_bytes = (max_upload_mb << 20) + MULTIPART_ROOM
        self.read_timeout_s = read_timeout_s

    def too_large(self) -> HTTPException:
        return HTTPException(
            413,
            f"file is larger than the {self.max_upload_mb} MB limit",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: no clock on that wait
                return await receive()
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise self.too_large()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive within {self.read_timeout_s:g} s",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self.too_large()
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        await self.app(scope, limited_receive, send)
