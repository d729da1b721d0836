"""Server-sent events (text/event-stream, framed by fastapi.sse) from a generator that must not
run on the event loop: the model's answer, piece by piece.

The generator runs in one worker thread from its first piece to its end (it holds the model
lock, kb.reader.stream), and hands each event to the event loop; a client that goes away stops
it at the next piece, and it is closed in that same thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import TypeVar

from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel

log = logging.getLogger(__name__)

R = TypeVar("R")

PIECE = "piece"  # data: {"text": "..."}, one per piece of text as the model produces it
FINAL = "final"  # data: the whole answer, as the non-streaming route answers it
ERROR = "error"  # data: {"detail": "..."}: the answer failed after the stream had begun


def event_stream(
    pieces: Generator[str, None, R], final: Callable[[R], BaseModel]
) -> EventSourceResponse:
    """A ``piece`` event per piece ``pieces`` yields, then one ``final`` event, whose data is
    ``final(what pieces returns)`` (or one ``error`` event)."""
    return EventSourceResponse(
        _events(pieces, final),
        # No cache, and no proxy buffering (nginx): each event goes out as it is made.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(kind: str, data: str) -> bytes:
    return format_sse_event(event=kind, data_str=data)


async def _events(
    pieces: Generator[str, None, R], final: Callable[[R], BaseModel]
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the last event was sent
    gone = threading.Event()  # the client went away: stop at the next piece

    def post(event: bytes | None) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, event)
        except RuntimeError:  # the loop is closed: no one is listening
            gone.set()

    def produce() -> None:
        try:
            while not gone.is_set():
                try:
                    piece = next(pieces)
                except StopIteration as end:
                    post(_event(FINAL, final(end.value).model_dump_json()))
                    return
                post(_event(PIECE, json.dumps({"text": piece})))
        except Exception:
            log.exception("a streamed answer failed")
            post(_event(ERROR, json.dumps({"detail": "internal server error"})))
        finally:
            pieces.close()  # here, in the thread that holds the model, if it stopped early
            post(None)

    loop.run_in_executor(None, produce)  # not awaited: it ends by itself, at the last piece
    try:
        while (event := await inbox.get()) is not None:
            yield event
    finally:
        gone.set()
