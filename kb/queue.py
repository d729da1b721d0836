"""The queue port: how the core hands work to the workers, without knowing the broker.

workers.queue implements it with Celery (the API gets that one in its lifespan); tests pass an
in-memory one. A broker that cannot take a message raises QueueUnavailable, so a use case can
undo what it stored and the API can answer 503.
"""

from __future__ import annotations

from typing import Protocol


class QueueUnavailable(Exception):
    """The broker did not take the message (down, unreachable); nothing was queued."""


class TaskQueue(Protocol):
    def enqueue_render(self, document_id: str) -> None:
        """Render (then encode) the document: ingest.render."""

    def enqueue_reindex(self, job_id: str) -> None:
        """Run a reindex job: admin.reindex."""

    def ping(self) -> None:
        """Raise QueueUnavailable unless the broker answers."""

    def depth(self) -> int:
        """Tasks waiting for a worker (not those running); QueueUnavailable when the broker
        does not answer."""
        ...

    def workers(self) -> dict[str, float]:
        """The workers heard from within KB_WORKER_ALIVE_S: name -> seconds since their last
        heartbeat; QueueUnavailable when the broker does not answer."""
        ...
