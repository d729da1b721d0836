"""The whole service through its HTTP API, with a real Celery worker process.

Run twice: on the embedded defaults (embedded Redis, SQLite, a local store directory) and on
real servers (Redis, PostgreSQL, an S3-protocol server on loopback).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy.orm import Session

from kb.catalog import make_engine, repo
from kb.keys import content_hash_of
from kb.store import make_store
from tests.ingest.samples import make_scan
from tests.ingest.test_ocr import LINES, WORDS
from tests.stack import ADMIN_KEY, Stack, make_pdf, wait_document, wait_for

pytestmark = pytest.mark.slow

PDF_PAGES = [
    "Quarterly report. Revenue in the third quarter was 4.2 million euros.",
    "Staffing. The Lisbon office employs 37 engineers and 5 designers.",
    "Risks. The main supplier of optical sensors is located in Osaka.",
]
NOTE_TEXT = "Meeting note\n\nThe board approved the new warehouse in Rotterdam.\n" * 3


@pytest.fixture(scope="module", params=["embedded", "services"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env: dict[str, str] = {}
    if request.param == "services":
        s3 = request.getfixturevalue("s3_server")
        env = {
            "KB_REDIS_URL": request.getfixturevalue("redis_url"),
            "KB_DATABASE_URL": request.getfixturevalue("postgres_url"),
            "KB_S3_ENDPOINT": s3.endpoint,
            "KB_S3_ACCESS_KEY": s3.access_key,
            "KB_S3_SECRET_KEY": s3.secret_key,
            "KB_S3_BUCKET": "kb-e2e",
        }
    data_dir = tmp_path_factory.mktemp(f"stack-{request.param}") / "data"
    s = Stack(data_dir, env).start()
    s.mode = request.param  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        code = s.stop()
        assert code == 0, s.log()
        # The launcher, an embedded Redis (embedded mode), the worker and its pool, the API.
        assert len(s.tree_before_stop) >= (4 if request.param == "embedded" else 3)
        assert s.survivors() == [], "Ctrl-C left processes behind"


@pytest.fixture(scope="module")
def corpus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A 3-page PDF and a text note, uploaded and ready."""
    tmp = tmp_path_factory.mktemp("corpus")
    pdf = make_pdf(tmp / "report.pdf", PDF_PAGES)
    note = tmp / "note.txt"
    note.write_text(NOTE_TEXT)
    ids = {}
    with stack.client() as c:
        for name, path in [("pdf", pdf), ("note", note)]:
            r = c.post("/v1/documents", files={"file": (path.name, path.read_bytes())})
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "queued"
            ids[name] = r.json()["id"]
        for doc_id in ids.values():
            doc = wait_document(c, doc_id)
            assert doc["status"] == "ready", (doc, stack.log())
    return ids


def test_health_reports_every_part(stack: Stack) -> None:
    with stack.client() as c:  # without the admin key: only the verdict
        assert c.get("/healthz").json() == {"status": "ok"}
    with stack.client(key=ADMIN_KEY) as c:
        h = c.get("/healthz").json()
    assert h["status"] == "ok"
    for part in ("queue", "store", "catalog"):
        assert h[part]["status"] == "ok", h
    assert h["model"]["name"] == "reference"
    assert isinstance(h["model"]["trained"], bool)
    assert h["model"]["version"].startswith("reference-")
    expected_store = "S3Store" if stack.mode == "services" else "LocalStore"  # type: ignore[attr-defined]
    assert h["store"]["backend"] == expected_store
    expected_db = "postgresql" if stack.mode == "services" else "sqlite"  # type: ignore[attr-defined]
    assert h["catalog"]["backend"] == expected_db


def test_documents_are_rendered_and_listed(stack: Stack, corpus: dict[str, str]) -> None:
    with stack.client() as c:
        doc = c.get(f"/v1/documents/{corpus['pdf']}").json()
        assert doc["filename"] == "report.pdf"
        assert doc["collection"] == "default"
        assert doc["pages"] == 3 and doc["pages_done"] == 3 and doc["error"] is None
        note = c.get(f"/v1/documents/{corpus['note']}").json()
        assert note["pages"] >= 1 and note["status"] == "ready"

        listed = {
            d["id"]
            for d in c.get("/v1/documents", params={"collection": "default"}).json()["documents"]
        }
        assert set(corpus.values()) <= listed
        assert c.get("/v1/documents", params={"collection": "nope"}).json()["documents"] == []

        png = c.get(f"/v1/documents/{corpus['pdf']}/pages/2/image")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (1024, 1024)

        text = c.get(f"/v1/documents/{corpus['pdf']}/pages/2/text", params={"tier": "text"}).json()
        assert "Lisbon office" in text["text"] and text["text_source"] == "text_layer"
        note_text = c.get(f"/v1/documents/{corpus['note']}/pages/1/text", params={"tier": "text"})
        assert "Rotterdam" in note_text.json()["text"]
        for tier in ("tiny", "gist"):
            r = c.get(f"/v1/documents/{corpus['pdf']}/pages/1/text", params={"tier": tier})
            assert r.status_code == 200, r.text
            assert r.json()["tier"] == tier and isinstance(r.json()["text"], str)

        assert c.get(f"/v1/documents/{corpus['pdf']}/pages/4/image").status_code == 404
        assert c.get(f"/v1/documents/{corpus['pdf']}/pages/0/text").status_code == 422
        bad_tier = c.get(f"/v1/documents/{corpus['pdf']}/pages/1/text", params={"tier": "huge"})
        assert bad_tier.status_code == 422 and "tier" in bad_tier.json()["detail"]
        short = c.get(f"/v1/documents/{corpus['pdf']}/pages/1/text", params={"max_bytes": 3})
        assert short.status_code == 200 and len(short.json()["text"]) <= 3  # a byte -> a char
        for bad in (0, 16385, "many"):
            r = c.get(f"/v1/documents/{corpus['pdf']}/pages/1/text", params={"max_bytes": bad})
            assert r.status_code == 422, (bad, r.text)


def test_ask_packs_every_page_and_cites_them(stack: Stack, corpus: dict[str, str]) -> None:
    with stack.client() as c:
        # Answered by the shipped weights, copied from the text tier, its page cited first.
        r = c.post("/v1/ask", json={"question": "Where is the optical sensor supplier?"})
        assert r.status_code == 200, r.text
        body = r.json()
        note_pages = c.get(f"/v1/documents/{corpus['note']}").json()["pages"]
        total_pages = 3 + note_pages
        assert body["answer"] == "Osaka" and body["found"] is True, body
        assert body["context"]["pages"] == total_pages
        assert body["context"]["left_out"] == 0
        assert body["context"]["tiers"] == {"text": total_pages}  # it all fits, exact
        first = body["citations"][0]
        assert (first["document_id"], first["page"], first["tier"]) == (corpus["pdf"], 3, "text")
        for cit in body["citations"]:
            assert cit["document_id"] in corpus.values()
            assert 1 <= cit["page"] <= (3 if cit["document_id"] == corpus["pdf"] else note_pages)
            assert cit["score"] > 0

        # Different questions about different pages cite different pages. (The README's
        # question finds its page but not yet "37": see the README and docs/benchmarks.md.)
        lisbon = c.post("/v1/ask", json={"question": "How many engineers work in Lisbon?"})
        if lisbon.json()["found"]:
            assert lisbon.json()["citations"][0]["page"] == 2, lisbon.json()

        # What the memory does not hold is said, not invented: no citation supports it.
        absent = c.post("/v1/ask", json={"question": "What is the refund policy for annual plans?"})
        assert absent.status_code == 200
        assert absent.json()["found"] is False and absent.json()["citations"] == []
        assert absent.json()["answer"] == "Not found in the collection."

        # A tight budget fades pages to cheaper tiers, and below one gist per page leaves pages
        # out, counted, never silently.
        tight = c.post(
            "/v1/ask", json={"question": "revenue?", "max_context_tokens": 16 * total_pages}
        )
        assert tight.json()["context"]["tiers"] == {"gist": total_pages}
        assert tight.json()["context"]["tokens"] == 16 * total_pages
        tiny = c.post("/v1/ask", json={"question": "revenue?", "max_context_tokens": 40}).json()
        assert tiny["context"]["pages"] == 2 and tiny["context"]["left_out"] == total_pages - 2
        # A budget that holds no page at all is refused, not answered from nothing.
        none = c.post("/v1/ask", json={"question": "revenue?", "max_context_tokens": 10})
        assert none.status_code == 422 and "holds no page" in none.json()["detail"]

        assert c.post("/v1/ask", json={"question": ""}).status_code == 422
        assert c.post("/v1/ask", json={"question": "x", "max_context_tokens": 0}).status_code == 422
        empty = c.post("/v1/ask", json={"question": "x", "collection": "empty-one"})
        assert empty.status_code == 404 and "no ready pages" in empty.json()["detail"]


def test_pinning_a_document(stack: Stack, corpus: dict[str, str]) -> None:
    with stack.client() as c:
        doc = corpus["pdf"]
        assert c.get(f"/v1/documents/{doc}").json()["pinned"] is False
        r = c.patch(f"/v1/documents/{doc}", json={"pinned": True})
        assert r.status_code == 200 and r.json()["pinned"] is True
        assert c.get(f"/v1/documents/{doc}").json()["pinned"] is True
        # Which pages the packer keeps exact is tests/kb/test_packer.py's; here: a pinned
        # document is still packed and answered from.
        body = c.post("/v1/ask", json={"question": "Where is the optical sensor supplier?"}).json()
        assert body["answer"] == "Osaka" and body["citations"][0]["document_id"] == doc
        assert c.patch(f"/v1/documents/{doc}", json={"pinned": False}).json()["pinned"] is False
        assert c.patch("/v1/documents/nope", json={"pinned": True}).status_code == 404
        assert c.patch(f"/v1/documents/{doc}", json={"pinned": "yes please"}).status_code == 422
        assert c.patch(f"/v1/documents/{doc}", json={"colour": "red"}).status_code == 422


def test_auth(stack: Stack, corpus: dict[str, str]) -> None:
    with stack.client(key="wrong") as c:
        assert c.get("/v1/documents").status_code == 401
        assert c.get("/healthz").status_code == 200  # the only open route
    with stack.client() as c:
        assert c.post("/v1/admin/reindex", json={}).status_code == 403
        assert c.get("/docs").status_code == 200
        assert "/v1/ask" in c.get("/openapi.json").json()["paths"]


def test_reindex_keeps_answering_then_completes(stack: Stack, corpus: dict[str, str]) -> None:
    with stack.client(key=ADMIN_KEY) as admin, stack.client() as c:
        r = admin.post("/v1/admin/reindex", json={"collection": "default"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        during = c.post("/v1/ask", json={"question": "How many engineers work in Lisbon?"})
        assert during.status_code == 200 and during.json()["context"]["pages"] >= 3

        job: dict = {}

        def done() -> bool:
            nonlocal job
            job = admin.get(f"/v1/admin/jobs/{job_id}").json()
            return job["status"] in ("done", "failed")

        wait_for(done, "reindex job")
        assert job["status"] == "done", job
        assert job["total"] == job["done"] >= 4
        assert admin.get("/v1/admin/jobs/nope").status_code == 404
        assert admin.post("/v1/admin/reindex", json={"collection": "missing"}).status_code == 404
        after = c.post("/v1/ask", json={"question": "How many engineers work in Lisbon?"})
        assert after.status_code == 200


def test_delete_removes_pages_from_later_answers(stack: Stack, corpus: dict[str, str]) -> None:
    settings = stack.settings()
    store, engine = make_store(settings), make_engine(settings.resolved_database_url)
    with Session(engine) as s:
        note_only = repo.page_hashes(s, corpus["note"]) - repo.page_hashes(s, corpus["pdf"])
    engine.dispose()
    note_keys = {k for k in store.list() if corpus["note"] in k or content_hash_of(k) in note_only}
    assert {k.split("/")[0] for k in note_keys} == {"originals", "pages", "tensors"}
    kept = set(store.list()) - note_keys
    with stack.client() as c:
        before = c.post("/v1/ask", json={"question": "What was approved?"}).json()
        assert c.delete(f"/v1/documents/{corpus['note']}").status_code == 204
        # Nothing of it is left in the store: its original, page images and tensors are gone,
        # every other document's objects are still there.
        assert set(store.list()) == kept
        assert c.get(f"/v1/documents/{corpus['note']}").status_code == 404
        assert c.delete(f"/v1/documents/{corpus['note']}").status_code == 404
        after = c.post("/v1/ask", json={"question": "What was approved?"}).json()
        assert after["context"]["pages"] == 3 < before["context"]["pages"]
        assert all(cit["document_id"] == corpus["pdf"] for cit in after["citations"])
        # The other document is untouched.
        assert c.get(f"/v1/documents/{corpus['pdf']}").json()["status"] == "ready"


def test_a_scan_is_read_by_the_worker(stack: Stack, tmp_path: Path) -> None:
    """A PNG scan goes through the real worker (its OCR engine loaded at process start) and its
    text tier is what OCR read, recorded as such."""
    scan = make_scan(tmp_path / "scan.png", LINES)
    with stack.client() as c:
        r = c.post(
            "/v1/documents",
            files={"file": (scan.name, scan.read_bytes())},
            data={"collection": "scans"},
        )
        assert r.status_code == 202, r.text
        doc = wait_document(c, r.json()["id"])
        assert doc["status"] == "ready", (doc, stack.log())
        text = c.get(f"/v1/documents/{doc['id']}/pages/1/text", params={"tier": "text"}).json()
    assert text["text_source"] == "ocr"
    assert [w for w in WORDS if w not in text["text"]] == [], text
