"""The queue port (kb.queue) on Celery: tasks sent by their stable names, never imported; how
deep the queue is; which workers are alive, from the heartbeats they write to Redis."""

from __future__ import annotations

import time

import kombu.exceptions
import redis
import redis.exceptions

from kb import priority
from kb.queue import QueueUnavailable
from kb.settings import get_settings
from workers.celery_app import app

# What a broker that is down or unreachable raises from a publish: kombu wraps connection errors
# in its OperationalError once its publish retries (task_publish_retry_policy) are spent.
BROKER_DOWN = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)
# One key per worker (its Celery hostname), holding the time of its last heartbeat and
# expiring KB_WORKER_ALIVE_S after it: a worker whose key is there is alive.
HEARTBEAT = "kb:worker:"


def heartbeat(client: redis.Redis, hostname: str) -> None:
    """A worker is alive (workers.tasks sends this every third of KB_WORKER_ALIVE_S)."""
    client.set(HEARTBEAT + hostname, repr(time.time()), ex=get_settings().worker_alive_s)


def stopped(client: redis.Redis, hostname: str) -> None:
    """A worker that stops says so, rather than looking alive until its heartbeat expires."""
    client.delete(HEARTBEAT + hostname)


class CeleryQueue:
    def __init__(self) -> None:
        self._redis: redis.Redis | None = None

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

    def depth(self) -> int:
        """Messages waiting in the task queue, over all its priority lists (kombu counts them:
        the list names are its own). A declare, not a passive one: Redis drops an empty list,
        and a passive declare of a queue with no list is an error, not a zero."""
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
                declared = conn.default_channel.queue_declare(queue=app.conf.task_default_queue)
                return int(declared.message_count)
        except BROKER_DOWN as exc:
            raise QueueUnavailable(f"the broker does not answer: {exc}") from exc

    def workers(self) -> dict[str, float]:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                get_settings().redis_url or "", socket_timeout=2, socket_connect_timeout=2
            )
        now, alive_s = time.time(), get_settings().worker_alive_s
        try:
            keys = list(self._redis.scan_iter(match=HEARTBEAT + "*", count=1000))
            beats = self._redis.mget(keys) if keys else []
        except BROKER_DOWN as exc:
            raise QueueUnavailable(f"the broker does not answer: {exc}") from exc
        seen = {
            key.decode().removeprefix(HEARTBEAT): max(now - float(beat), 0.0)
            for key, beat in zip(keys, beats, strict=True)
            if beat is not None  # expired between the scan and the read
        }
        return {name: ago for name, ago in seen.items() if ago <= alive_s}

    def _send(self, name: str, arg: str, level: int) -> None:
        try:
            app.send_task(name, args=[arg], priority=level)
        except BROKER_DOWN as exc:
            raise QueueUnavailable(f"the broker did not take {name}({arg}): {exc}") from exc
