"""The queue port (kb.queue) on Celery: tasks sent by their stable names, never imported."""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions

from kb import priority
from kb.queue import QueueUnavailable
from workers.celery_app import app

# What a broker that is down or unreachable raises from a publish: kombu wraps connection errors
# in its OperationalError once its publish retries (task_publish_retry_policy) are spent.
BROKER_DOWN = (kombu.exceptions.OperationalError, redis.exceptions.ConnectionError, OSError)


class CeleryQueue:
    def enqueue_render(self, document_id: str) -> None:
        self._send("ingest.render", document_id, priority.RENDER)

    def enqueue_reindex(self, job_id: str) -> None:
        self._send("admin.reindex", job_id, priority.REINDEX)

    def ping(self) -> None:
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except BROKER_DOWN as exc:
            raise QueueUnavailable(f"the broker does not answer: {exc}") from exc

    def _send(self, name: str, arg: str, level: int) -> None:
        try:
            app.send_task(name, args=[arg], priority=level)
        except BROKER_DOWN as exc:
            raise QueueUnavailable(f"the broker did not take {name}({arg}): {exc}") from exc
