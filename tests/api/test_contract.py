"""The HTTP contract in-process, without a broker: FastAPI's TestClient over the real app, the
real catalog (SQLite) and store, and the in-memory queue (tests/queues.py) in place of Celery.
Every status code a client can be given for its mistakes, and 503 when the queue is down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.in_process import app_client
from tests.queues import RecordingQueue
from tests.stack import ADMIN_KEY, API_KEY, make_pdf

USER = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract") / "data"


@pytest.fixture(scope="module")
def client(data_dir: Path, queue: RecordingQueue) -> Iterator[TestClient]:
    with app_client(data_dir, queue, max_upload_mb=1) as c:
        yield c


@pytest.fixture(autouse=True)
def queue_up(queue: RecordingQueue) -> None:
    queue.down = False


@pytest.fixture(scope="module")
def pdf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_pdf(
        tmp_path_factory.mktemp("pdf") / "a.pdf", ["The password is swordfish."]
    ).read_bytes()


def test_401_without_a_key_or_with_a_wrong_one(client: TestClient) -> None:
    assert client.get("/v1/documents").status_code == 401
    r = client.get("/v1/documents", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json() == {"detail": "invalid API key"}
    assert r.headers["WWW-Authenticate"] == "Bearer"


def test_403_for_the_user_key_on_admin_routes(client: TestClient) -> None:
    r = client.post("/v1/admin/reindex", headers=USER)
    assert r.status_code == 403 and "admin key" in r.json()["detail"]


def test_404s(client: TestClient) -> None:
    for path in (
        f"/v1/documents/{MISSING}",
        "/v1/documents/not-an-id",
        f"/v1/documents/{MISSING}/pages/1/image",
    ):
        r = client.get(path, headers=USER)
        assert r.status_code == 404 and r.json()["detail"] == "document not found", path
    assert client.delete(f"/v1/documents/{MISSING}", headers=USER).status_code == 404
    assert client.get(f"/v1/admin/jobs/{MISSING}", headers=ADMIN).status_code == 404
    r = client.post("/v1/admin/reindex", headers=ADMIN, json={"collection": "nowhere"})
    assert r.status_code == 404 and "nowhere" in r.json()["detail"]
    r = client.post("/v1/ask", headers=USER, json={"question": "?", "collection": "empty"})
    assert r.status_code == 404


def test_413_past_the_upload_limit(client: TestClient) -> None:
    r = client.post("/v1/documents", headers=USER, files={"file": ("big.txt", b"a" * (2 << 20))})
    assert r.status_code == 413 and "1 MB" in r.json()["detail"]


def test_415_for_unsupported_types(client: TestClient) -> None:
    r = client.post("/v1/documents", headers=USER, files={"file": ("tool.exe", b"MZ\x90\x00")})
    assert r.status_code == 415 and ".exe" in r.json()["detail"]
    r = client.post("/v1/documents", headers=USER, files={"file": ("fake.png", b"plain text")})
    assert r.status_code == 415 and "not a PNG" in r.json()["detail"]


def test_422s(client: TestClient, pdf: bytes) -> None:
    r = client.post("/v1/documents", headers=USER, files={"file": ("empty.pdf", b"")})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = client.post("/v1/documents", headers=USER)
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = client.post(
        "/v1/documents", headers=USER, files=[("file", ("a.pdf", pdf)), ("file", ("b.pdf", pdf))]
    )
    assert r.status_code == 422 and "one file per request" in r.json()["detail"]
    r = client.post(
        "/v1/documents", headers=USER, files={"file": ("a.pdf", pdf)}, data={"collection": "a\nb"}
    )
    assert r.status_code == 422 and "collection" in r.json()["detail"]
    r = client.post("/v1/ask", headers=USER, json={"question": ""})
    assert r.status_code == 422 and "question" in r.json()["detail"]
    r = client.get(f"/v1/documents/{MISSING}/pages/0/image", headers=USER)
    assert r.status_code == 422
    for wrong in ("maybe", "yes", "false", 1, None):  # JSON true or false, nothing guessed
        r = client.patch(f"/v1/documents/{MISSING}", headers=USER, json={"pinned": wrong})
        assert r.status_code == 422, wrong


def test_an_upload_is_queued_once(client: TestClient, queue: RecordingQueue, pdf: bytes) -> None:
    r = client.post(
        "/v1/documents", headers=USER, files={"file": ("a.pdf", pdf)}, data={"collection": "once"}
    )
    assert r.status_code == 202, r.text
    doc = r.json()
    assert (doc["status"], doc["duplicate"]) == ("queued", False)
    assert queue.renders()[-1] == doc["id"]
    r = client.post(
        "/v1/documents", headers=USER, files={"file": ("a.pdf", pdf)}, data={"collection": "once"}
    )
    assert r.status_code == 200 and r.json() == {**doc, "duplicate": True}
    assert queue.renders().count(doc["id"]) == 1
    r = client.get(f"/v1/documents/{doc['id']}", headers=USER)
    assert r.status_code == 200 and r.json()["status"] == "queued"


def test_503_when_the_queue_is_down_and_nothing_is_stored(
    client: TestClient, queue: RecordingQueue, pdf: bytes, data_dir: Path
) -> None:
    queue.down = True
    r = client.post(
        "/v1/documents", headers=USER, files={"file": ("a.pdf", pdf)}, data={"collection": "down"}
    )
    assert r.status_code == 503 and "nothing was stored" in r.json()["detail"]
    assert client.get("/v1/documents?collection=down", headers=USER).json() == {"documents": []}
    originals = data_dir / "objects" / "originals"
    listed = client.get("/v1/documents", headers=USER).json()["documents"]
    assert {p.name for p in originals.iterdir()} == {d["id"] for d in listed}
    r = client.post("/v1/admin/reindex", headers=ADMIN)
    assert r.status_code == 503
    r = client.get("/healthz", headers=ADMIN)
    assert r.status_code == 503 and r.json()["queue"]["status"] == "error"

    queue.down = False  # the broker is back: the same upload is accepted
    r = client.post(
        "/v1/documents", headers=USER, files={"file": ("a.pdf", pdf)}, data={"collection": "down"}
    )
    assert r.status_code == 202 and queue.renders()[-1] == r.json()["id"]
    assert client.get("/healthz").status_code == 200


def test_reindex_jobs_one_at_a_time_and_cancelled(
    client: TestClient, queue: RecordingQueue
) -> None:
    r = client.post("/v1/admin/reindex", headers=ADMIN, json={})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["duplicate"] is False and queue.sent[-1] == ("admin.reindex", job_id)
    # An identical job queued or running is returned, not started twice.
    r = client.post("/v1/admin/reindex", headers=ADMIN)
    assert r.status_code == 200 and r.json() == {"job_id": job_id, "duplicate": True}
    assert [arg for _, arg in queue.sent].count(job_id) == 1

    for bad in ("", "../etc", "a/b", "x" * 65, "-leading-dash"):
        r = client.post("/v1/admin/reindex", headers=ADMIN, json={"model_version": bad})
        assert r.status_code == 422 and "model_version" in r.json()["detail"], bad
    r = client.post(
        "/v1/admin/reindex",
        headers=ADMIN,
        json={"model_version": "reference-0123456789ab", "collection": "once"},
    )
    assert r.status_code == 422 and "every collection" in r.json()["detail"]

    r = client.delete(f"/v1/admin/jobs/{job_id}", headers=ADMIN)
    assert r.status_code == 200 and (r.json()["id"], r.json()["status"]) == (job_id, "cancelled")
    assert client.get(f"/v1/admin/jobs/{job_id}", headers=ADMIN).json()["status"] == "cancelled"
    r = client.delete(f"/v1/admin/jobs/{job_id}", headers=ADMIN)
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert client.delete(f"/v1/admin/jobs/{MISSING}", headers=ADMIN).status_code == 404
    assert client.delete("/v1/admin/jobs/not-an-id", headers=ADMIN).status_code == 404
    assert client.delete(f"/v1/admin/jobs/{job_id}", headers=USER).status_code == 403


def test_healthz_reports_a_model_version_mismatch(client: TestClient) -> None:
    from kb.catalog import repo

    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    running = ctx.backend.version
    r = client.get("/healthz", headers=ADMIN)
    assert r.status_code == 200 and r.json()["model"]["status"] == "ok", r.json()
    try:
        with ctx.session() as s:  # a reindex to other weights has switched the catalog
            repo.set_serving_version(s, "reference-0123456789ab")
        r = client.get("/healthz", headers=ADMIN)
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        model = r.json()["model"]
        assert (model["status"], model["version"]) == ("error", running)
        assert model["error"].startswith(
            f"this process runs model version {running} but the catalog serves "
            "reference-0123456789ab"
        )
        assert client.get("/healthz").json() == {"status": "degraded"}
    finally:
        with ctx.session() as s:
            repo.set_serving_version(s, running)
    assert client.get("/healthz").status_code == 200
