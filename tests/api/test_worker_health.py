"""Worker liveness in /healthz and /metrics, with real processes: a Redis of the test's own, the
API under uvicorn and a Celery worker started apart (as docker compose runs them), so the
worker can come late and die without a word."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest_services import _redis_server_binary, free_port, wait_until
from tests.stack import ADMIN_KEY, API_KEY, ROOT, make_pdf, wait_document, wait_for

pytestmark = pytest.mark.slow

ALIVE_S = 3  # KB_WORKER_ALIVE_S: its smallest, so a killed worker is seen dead in seconds


class Processes:
    def __init__(self, folder: Path) -> None:
        self.folder, self.procs = folder, []
        self.log = (folder / "processes.log").open("ab")

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL to its whole group: a worker (and its pool) that vanishes without a word."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def text(self) -> str:
        self.log.flush()
        return (self.folder / "processes.log").read_text(errors="replace")[-6000:]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        for proc in reversed(procs.procs):
            procs.kill(proc)
        procs.log.close()


def test_healthz_is_503_without_a_live_worker_and_200_with_one(
    tmp_path: Path, processes: Processes
) -> None:
    binary = _redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary")
    redis_port, port = free_port(), free_port()
    processes.start(
        [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir",
         str(tmp_path)],
        dict(os.environ),
    )  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KB_")},
        "KB_DATA_DIR": str(tmp_path / "data"),
        "KB_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "KB_API_KEY": API_KEY,
        "KB_ADMIN_KEY": ADMIN_KEY,
        "KB_WORKER_ALIVE_S": str(ALIVE_S),
    }
    url = f"http://127.0.0.1:{port}"
    api = ["-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)]
    processes.start([sys.executable, *api], env)

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=5).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    wait_until(answers, "the API", timeout=120)
    user = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def health() -> tuple[int, dict]:
        r = admin.get("/healthz")
        return r.status_code, r.json()

    def gauge(name: str) -> float:
        text = admin.get("/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return families[name].samples[0].value

    # No worker yet: degraded, though every other part is up; work waits in the queue.
    r = httpx.get(f"{url}/healthz")
    assert r.status_code == 503 and r.json() == {"status": "degraded"}
    code, h = health()
    assert code == 503 and h["workers"]["status"] == "error", h
    assert f"no worker heard from within {ALIVE_S} s" in h["workers"]["error"]
    assert all(h[part]["status"] == "ok" for part in ("queue", "store", "catalog")), h
    pdf = make_pdf(tmp_path / "a.pdf", ["The password is swordfish."])
    r = user.post("/v1/documents", files={"file": ("a.pdf", pdf.read_bytes())})
    assert r.status_code == 202, r.text
    assert health()[1]["queue"]["depth"] == 1  # its render, with no one to take it
    assert gauge("kb_queue_depth") == 1 and gauge("kb_workers_alive") == 0

    # A worker starts: alive once it has written its first heartbeat, and it drains the queue.
    celery = ["-m", "celery", "-A", "workers.celery_app", "worker", "--queues", "kb"]
    celery += ["--concurrency", "1", "--hostname", "health-test@%h", "--loglevel", "INFO"]
    worker = processes.start([sys.executable, *celery], env)
    wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "a live worker", 180)
    code, h = health()
    assert code == 200 and h["workers"]["alive"] == 1, h
    assert h["workers"]["within_s"] == ALIVE_S and 0 <= h["workers"]["last_heard_s"] <= ALIVE_S
    assert gauge("kb_workers_alive") == 1
    assert wait_document(user, r.json()["id"])["status"] == "ready", processes.text()
    wait_for(lambda: health()[1]["queue"]["depth"] == 0, "an empty queue", 30)

    # Killed without a word: no heartbeat for ALIVE_S seconds, and /healthz says so.
    processes.kill(worker)
    wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 503, "a dead worker", 3 * ALIVE_S)
    code, h = health()
    assert code == 503 and h["workers"]["status"] == "error", h
    assert gauge("kb_workers_alive") == 0
