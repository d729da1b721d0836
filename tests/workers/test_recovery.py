"""Unfinished work finishes (issue 11): the whole stack (`kb run`) stopped with Ctrl-C, its
broker restarted or stopped, its whole worker SIGKILLed, a task frozen past the hard time limit;
each document ends ready with exactly its pages, or failed with a message, and an upload while
the broker is down is refused with 503 and leaves nothing behind. A reindex to other weights
stopped mid-way completes after a restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from kb.catalog import repo
from kb.catalog.models import Page
from kb.context import Context
from tests.conftest_services import _redis_ping, _redis_server_binary, free_port, wait_until
from tests.stack import ADMIN_KEY, Stack, make_pdf, wait_document, wait_for
from tests.workers.test_worker_lost import _cmdline, _parent, pool_processes

pytestmark = pytest.mark.slow

PAGES = 32  # 8 chunks of 4 (the stack's KB_RENDER_CHUNK_PAGES)


def upload(c: httpx.Client, path: Path, collection: str = "default") -> httpx.Response:
    return c.post(
        "/v1/documents",
        files={"file": (path.name, path.read_bytes())},
        data={"collection": collection},
    )


def wait_mid_ingest(c: httpx.Client, doc_id: str) -> None:
    def mid() -> bool:
        doc = c.get(f"/v1/documents/{doc_id}").json()
        assert doc["status"] != "failed", doc
        return doc["status"] == "processing" and 0 < doc["pages_done"] < PAGES

    wait_for(mid, f"document {doc_id} half encoded", timeout=240)


def assert_exactly_ingested(stack: Stack, doc: dict) -> None:
    assert (doc["status"], doc["pages"], doc["pages_done"]) == ("ready", PAGES, PAGES), doc
    ctx = Context(stack.settings(), migrate=False)
    try:
        with ctx.session() as s:
            of_doc = Page.document_id == doc["id"]
            rows = s.scalar(select(func.count()).where(of_doc))
            numbers = s.scalar(select(func.count(func.distinct(Page.number))).where(of_doc))
            unencoded = s.scalar(select(func.count()).where(of_doc, Page.encoded_version.is_(None)))
    finally:
        ctx.close()
    assert (rows, numbers, unencoded) == (PAGES, PAGES, 0)


def long_pdf(tmp_path: Path, name: str) -> Path:
    return make_pdf(
        tmp_path / f"{name}.pdf", [f"{name}: page {i} of {PAGES}." for i in range(1, PAGES + 1)]
    )


def test_ctrl_c_mid_ingest_then_start_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stack = Stack(data).start()
    with stack.client() as c:
        doc_id = upload(c, long_pdf(tmp_path, "kept-queue")).json()["id"]
        wait_mid_ingest(c, doc_id)
    assert stack.stop() == 0, stack.log()
    assert stack.survivors() == []
    assert "Traceback" not in stack.log_path.read_text(), stack.log()

    # The embedded Redis kept its queue (its append-only file): the document finishes without
    # the sweep, which would wait KB_STALLED_AFTER_S (15 minutes) first.
    stack = Stack(data).start()
    try:
        with stack.client() as c:
            assert_exactly_ingested(stack, wait_document(c, doc_id, timeout=300))
            # Stopped again mid-ingest, and this time the broker's queue is lost (as with the
            # old `--appendonly no`): the sweep re-drives the stalled document.
            lost_id = upload(c, long_pdf(tmp_path, "lost-queue")).json()["id"]
            wait_mid_ingest(c, lost_id)
    finally:
        assert stack.stop() == 0, stack.log()
    assert "Traceback" not in stack.log_path.read_text(), stack.log()
    shutil.rmtree(data / "redis")

    stack = Stack(data, {"KB_STALLED_AFTER_S": "5", "KB_SWEEP_INTERVAL_S": "2"}).start()
    try:
        with stack.client() as c:
            assert_exactly_ingested(stack, wait_document(c, lost_id, timeout=300))
        assert f"document {lost_id}: progress stalled" in stack.log_path.read_text()
    finally:
        assert stack.stop() == 0, stack.log()


class Redis:
    """A redis-server of the test's own, restarted on the same port with the same files."""

    def __init__(self, workdir: Path) -> None:
        binary = _redis_server_binary()
        if binary is None:
            pytest.skip("no redis-server binary")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        args = [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
        ]
        self.proc = subprocess.Popen(
            [self.binary, *args, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _redis_ping(self.url), "redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_broker_restarted_mid_ingest_and_upload_while_it_is_down(
    tmp_path: Path, redis_server: Redis
) -> None:
    env = {"KB_REDIS_URL": redis_server.url, "KB_STALLED_AFTER_S": "20", "KB_SWEEP_INTERVAL_S": "5"}
    stack = Stack(tmp_path / "data", env).start()
    try:
        with stack.client() as c:
            doc_id = upload(c, long_pdf(tmp_path, "restarted")).json()["id"]
            wait_mid_ingest(c, doc_id)
            redis_server.stop()
            redis_server.start()
            assert_exactly_ingested(stack, wait_document(c, doc_id, timeout=300))

            redis_server.stop()
            small = make_pdf(tmp_path / "small.pdf", ["Uploaded while the broker was down."])
            r = upload(c, small, "down")
            assert r.status_code == 503, r.text
            assert c.get("/v1/documents", params={"collection": "down"}).json() == {"documents": []}
            originals = stack.data_dir / "objects" / "originals"
            assert {p.name for p in originals.iterdir()} == {doc_id}

            redis_server.start()
            r = upload(c, small, "down")
            assert r.status_code == 202, r.text
            assert wait_document(c, r.json()["id"])["status"] == "ready", stack.log()
    finally:
        redis_server.start() if redis_server.proc and redis_server.proc.poll() is not None else None
        assert stack.stop() == 0, stack.log()


def test_a_task_frozen_past_the_hard_time_limit_fails_its_document(tmp_path: Path) -> None:
    # A 45 s hard limit gives a 15 s soft one (workers.celery_app): the time the test has to
    # freeze the render of 1,500 pages (which takes longer) before the soft limit would end it.
    stack = Stack(tmp_path / "data", {"KB_TASK_TIME_LIMIT_S": "45"}).start()
    try:
        with stack.client() as c:
            pdf = make_pdf(tmp_path / "frozen.pdf", [f"page {i}" for i in range(1500)])
            r = upload(c, pdf)
            doc_id = r.json()["id"]
            line = f"document {doc_id}: ingest.render starts (0 earlier"
            wait_for(lambda: line in stack.log_path.read_text(), line, timeout=120)
            pool = pool_processes(stack)
            assert len(pool) == 1, pool
            # Frozen (as by swapping, or a native call that never returns): the soft limit's
            # signal cannot be handled, so the worker kills the process at the hard limit.
            os.kill(pool[0], signal.SIGSTOP)
            doc = wait_document(c, doc_id, timeout=240)
            assert doc["status"] == "failed", doc
            assert doc["error"].startswith("processing took longer than 45 s and was stopped"), doc

            # Uploading it again restarts that document.
            r = upload(c, pdf)
            assert r.status_code == 202, r.text
            assert (r.json()["id"], r.json()["duplicate"]) == (doc_id, True)
            assert r.json()["status"] == "queued"
    finally:
        assert stack.stop() == 0, stack.log()


def worker_main(stack: Stack) -> int:
    """The Celery worker's main process: the celery process the launcher started (its own
    process group, with its pool in it)."""
    assert stack.proc is not None
    celery = [pid for pid in stack.children() if b"celery" in _cmdline(pid)]
    (main,) = [pid for pid in celery if _parent(pid) == stack.proc.pid]
    return main


def test_the_whole_worker_killed_mid_ingest_then_a_new_one_finishes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stack = Stack(data).start()
    with stack.client() as c:
        doc_id = upload(c, long_pdf(tmp_path, "host-lost")).json()["id"]
        wait_mid_ingest(c, doc_id)
    # The worker and its pool at once, as a lost host or the out-of-memory killer of a
    # container: no cold shutdown hands its message back, and its chunk stays hidden in Redis
    # (unacknowledged) until the visibility timeout.
    os.killpg(worker_main(stack), signal.SIGKILL)
    assert stack.proc is not None
    assert stack.proc.wait(60) == 1, stack.log()  # `kb run` stops the rest when a child dies
    stack.stop()

    # A new worker: the sweep re-drives the document once its progress has stalled for
    # KB_STALLED_AFTER_S, well before the visibility timeout (KB_TASK_TIME_LIMIT_S + 60 s).
    stack = Stack(data, {"KB_STALLED_AFTER_S": "5", "KB_SWEEP_INTERVAL_S": "2"}).start()
    try:
        with stack.client() as c:
            assert_exactly_ingested(stack, wait_document(c, doc_id, timeout=300))
        assert f"document {doc_id}: progress stalled" in stack.log_path.read_text()
    finally:
        assert stack.stop() == 0, stack.log()


def tiny_weights(path: Path) -> Path:
    """Other weights than the shipped ones: a tiny random model, fast to encode with."""
    from kb.model.reference.backend import random_model, save_weights
    from tests.kb.model.reference.conftest import tiny_config

    config = tiny_config()
    save_weights(random_model(config, seed=7), config, path)
    return path


def test_a_reindex_to_other_weights_stopped_mid_way_completes_after_a_restart(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    old = {"KB_MODEL_PATH": str(tiny_weights(tmp_path / "old.safetensors"))}
    stack = Stack(data, old).start()
    try:
        with stack.client() as c:
            doc_id = upload(c, long_pdf(tmp_path, "reindexed")).json()["id"]
            assert_exactly_ingested(stack, wait_document(c, doc_id, timeout=300))
        with stack.client(ADMIN_KEY) as admin:
            old_version = admin.get("/healthz").json()["model"]["version"]
    finally:
        assert stack.stop() == 0, stack.log()

    # Started again with the shipped weights; a running batch is handed back at once on Ctrl-C.
    new = {"KB_SHUTDOWN_GRACE_S": "0"}
    stack = Stack(data, new).start(health=(503,))  # the catalog serves the old weights
    try:
        with stack.client(ADMIN_KEY) as admin, stack.client() as c:
            health = admin.get("/healthz")
            assert health.status_code == 503, health.text
            new_version = health.json()["model"]["version"]
            assert f"the catalog serves {old_version}" in health.json()["model"]["error"]
            # It cannot read the old tensors: it says so instead of answering from nothing.
            r = c.post("/v1/ask", json={"question": "Which page?"})
            assert r.status_code == 503 and old_version in r.json()["detail"], r.text

            r = admin.post("/v1/admin/reindex", json={})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]

            def mid_way() -> bool:
                job = admin.get(f"/v1/admin/jobs/{job_id}").json()
                assert job["status"] in ("queued", "running"), job
                assert job["model_version"] == new_version, job
                return 0 < job["done"] < PAGES

            wait_for(mid_way, "the reindex half done", timeout=300)
    finally:
        assert stack.stop() == 0, stack.log()
    ctx = Context(stack.settings(), migrate=False)
    try:
        with ctx.session() as s:
            row = repo.get_job(s, job_id)
            assert row is not None and row.status == "running" and row.done < PAGES, row
    finally:
        ctx.close()

    stack = Stack(data, new).start(health=(200, 503))  # 200 once the job has switched
    try:
        with stack.client(ADMIN_KEY) as admin, stack.client() as c:
            job: dict = {}

            def finished() -> bool:
                nonlocal job
                job = admin.get(f"/v1/admin/jobs/{job_id}").json()
                return job["status"] in ("done", "failed", "cancelled")

            wait_for(finished, "the reindex to finish", timeout=300)
            assert (job["status"], job["done"], job["total"]) == ("done", PAGES, PAGES), job
            assert admin.get("/healthz").status_code == 200
            answer = c.post("/v1/ask", json={"question": "Which page?"}).json()
            assert answer["context"]["pages"] == PAGES, answer
            assert answer["context"]["other_version"] == 0 and answer["model"] == new_version
    finally:
        assert stack.stop() == 0, stack.log()
    ctx = Context(stack.settings(), migrate=False)
    try:
        with ctx.session() as s:
            assert repo.serving_version(s) == new_version
            switched = [p.encoded_version for p in repo.pages_of_collection(s, None)]
    finally:
        ctx.close()
    assert switched == [new_version] * PAGES
    tensors = stack.data_dir / "objects" / "tensors"
    assert {p.name for p in tensors.iterdir()} == {new_version}  # the old ones collected
