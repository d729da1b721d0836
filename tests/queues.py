"""An in-memory implementation of the queue port (kb.queue.TaskQueue), for tests that run the
core or the API without a broker: it records what was sent, and can be 'down'."""

from __future__ import annotations

from dataclasses import dataclass, field

from kb.queue import QueueUnavailable


@dataclass
class RecordingQueue:
    sent: list[tuple[str, str]] = field(default_factory=list)
    down: bool = False
    # The workers it reports alive (name -> seconds since heard from): none, and /healthz is 503.
    alive: dict[str, float] = field(default_factory=lambda: {"in-memory": 0.0})

    def enqueue_render(self, document_id: str) -> None:
        self._send("ingest.render", document_id)

    def enqueue_reindex(self, job_id: str) -> None:
        self._send("admin.reindex", job_id)

    def ping(self) -> None:
        if self.down:
            raise QueueUnavailable("the test's queue is down")

    def depth(self) -> int:
        self.ping()
        return len(self.sent)  # nothing consumes them

    def workers(self) -> dict[str, float]:
        self.ping()
        return dict(self.alive)

    def _send(self, name: str, arg: str) -> None:
        self.ping()
        self.sent.append((name, arg))

    def renders(self) -> list[str]:
        return [arg for name, arg in self.sent if name == "ingest.render"]
