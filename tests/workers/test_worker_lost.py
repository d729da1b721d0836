"""A document whose task kills its worker process: delivered again once, then failed for good.

The whole stack runs (`kb run`: embedded Redis, a Celery worker, the API); the test plays the
out-of-memory killer, SIGKILLing the worker's pool process while it renders the document.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, make_pdf, wait_document, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("lost") / "data").start()
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def pool_processes(stack: Stack) -> list[int]:
    """The Celery pool's processes: celery processes forked by the celery worker."""
    celery = {pid for pid in stack.children() if b"celery" in _cmdline(pid)}
    return [pid for pid in celery if _parent(pid) in celery]


def test_a_task_that_kills_its_worker_twice_fails_its_document(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.client() as c:
        kept = make_pdf(tmp_path / "kept.pdf", ["The warehouse is in Rotterdam."])
        r = c.post("/v1/documents", files={"file": ("kept.pdf", kept.read_bytes())})
        kept_id = r.json()["id"]
        assert wait_document(c, kept_id)["status"] == "ready", stack.log()

        heavy = make_pdf(tmp_path / "heavy.pdf", [f"page {i}" for i in range(400)])
        r = c.post("/v1/documents", files={"file": ("heavy.pdf", heavy.read_bytes())})
        assert r.status_code == 202, r.text
        doc_id = r.json()["id"]
        for lost in (0, 1):
            line = f"document {doc_id}: ingest.render starts ({lost} earlier"
            wait_for(lambda line=line: line in stack.log_path.read_text(), line, timeout=180)
            pool = pool_processes(stack)
            assert len(pool) == 1, pool  # concurrency 1: the one running the render
            os.kill(pool[0], signal.SIGKILL)

        doc = wait_document(c, doc_id, timeout=180)
        assert doc["status"] == "failed", doc
        assert "stopped the worker 2 times" in doc["error"], doc
        log = stack.log_path.read_text()
        assert f"document {doc_id}: ingest.render starts (2 earlier" in log
        assert f"document {doc_id}: ingest.render starts (3 earlier" not in log

        # The worker lives on: a new upload is processed, the earlier document is intact.
        after = make_pdf(tmp_path / "after.pdf", ["Staffing grew to 37 engineers."])
        r = c.post("/v1/documents", files={"file": ("after.pdf", after.read_bytes())})
        assert wait_document(c, r.json()["id"])["status"] == "ready", stack.log()
        assert c.get(f"/v1/documents/{kept_id}").json()["status"] == "ready"


def test_a_time_limit_says_how_long_not_damaged(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The shortest hard limit allowed (10 s) gives a 5 s soft limit; 1,500 pages take longer.
    data = tmp_path_factory.mktemp("slow") / "data"
    s = Stack(data, {"KB_TASK_TIME_LIMIT_S": "10"}).start()
    try:
        with s.client() as c:
            pdf = make_pdf(data.parent / "long.pdf", [f"page {i}" for i in range(1500)])
            r = c.post("/v1/documents", files={"file": ("long.pdf", pdf.read_bytes())})
            doc = wait_document(c, r.json()["id"], timeout=120)
        assert doc["status"] == "failed", doc
        assert doc["error"].startswith("processing took longer than 5 s"), doc
        assert "damaged" not in doc["error"]
    finally:
        assert s.stop() == 0, s.log()
