"""Bad uploads through the HTTP API and the real worker: a clear 4xx or a `failed` document whose
error a person understands; the worker keeps running and nothing already stored changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, make_pdf, upload_ready, wait_document

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("bad") / "data", {"KB_MAX_UPLOAD_MB": "1"}).start()
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def good(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A ready document, uploaded before any bad input, which must come through untouched."""
    return upload_ready(stack, tmp_path_factory.mktemp("good"))


def upload(stack: Stack, name: str, data: bytes):
    with stack.client() as c:
        return c.post("/v1/documents", files={"file": (name, data)})


def assert_untouched(stack: Stack, good: dict) -> None:
    with stack.client() as c:
        doc = c.get(f"/v1/documents/{good['doc']['id']}").json()
        assert doc == good["doc"]
        assert c.get(f"/v1/documents/{doc['id']}/pages/1/image").content == good["image"]
        r = c.post("/v1/ask", json={"question": "What is the password?"})
        assert r.status_code == 200 and r.json()["context"]["pages"] >= 1


def test_empty_file_is_refused(stack: Stack, good: dict) -> None:
    r = upload(stack, "empty.pdf", b"")
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert_untouched(stack, good)


def test_unsupported_type_is_refused(stack: Stack, good: dict) -> None:
    r = upload(stack, "tool.exe", b"MZ\x90\x00 not a document")
    assert r.status_code == 415 and ".exe" in r.json()["detail"]
    r = upload(stack, "fake.png", b"this is plain text, not a PNG")
    assert r.status_code == 415 and "not a PNG" in r.json()["detail"]
    assert_untouched(stack, good)


def test_file_over_the_limit_is_refused(stack: Stack, good: dict) -> None:
    r = upload(stack, "big.txt", b"a" * (3 << 20))
    assert r.status_code == 413 and "1 MB" in r.json()["detail"]
    assert_untouched(stack, good)


def test_corrupt_pdf_fails_with_a_readable_error(stack: Stack, good: dict) -> None:
    # It looks like a PDF at upload; the worker finds out it isn't one.
    r = upload(stack, "broken.pdf", b"%PDF-1.7\n" + b"\x00garbage\xff" * 500)
    assert r.status_code == 202, r.text
    with stack.client() as c:
        doc = wait_document(c, r.json()["id"])
    assert doc["status"] == "failed"
    assert doc["error"].startswith("the PDF could not be opened; it is damaged")
    assert_untouched(stack, good)


def test_encrypted_pdf_fails_with_a_readable_error(
    stack: Stack, good: dict, tmp_path: Path
) -> None:
    pdf = make_pdf(
        tmp_path / "locked.pdf",
        ["secret"],
        encryption=4,  # AES-256
        user_pw="user",
        owner_pw="owner",
    )
    r = upload(stack, "locked.pdf", pdf.read_bytes())
    assert r.status_code == 202, r.text
    with stack.client() as c:
        doc = wait_document(c, r.json()["id"])
    assert doc["status"] == "failed"
    assert doc["error"] == "the PDF is protected with a password; upload a copy without a password"
    assert_untouched(stack, good)


def test_file_name_with_path_parts_is_cleaned(stack: Stack, good: dict, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "x.pdf", ["Path parts never reach the store."])
    r = upload(stack, "../../etc/evil.pdf", pdf.read_bytes())
    assert r.status_code == 202, r.text
    with stack.client() as c:
        doc = wait_document(c, r.json()["id"])
    assert doc["filename"] == "evil.pdf" and doc["status"] == "ready"
    assert not (stack.data_dir.parent.parent / "etc").exists()
    r = upload(stack, "..", b"%PDF-1.4")
    assert r.status_code == 422
    assert_untouched(stack, good)


def test_worker_keeps_running_after_bad_input(stack: Stack, good: dict, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "after.pdf", ["Still working after all that."])
    r = upload(stack, "after.pdf", pdf.read_bytes())
    with stack.client() as c:
        assert wait_document(c, r.json()["id"])["status"] == "ready"


def test_duplicate_upload_returns_the_existing_document(stack: Stack, tmp_path: Path) -> None:
    data = make_pdf(tmp_path / "dup.pdf", ["Uploaded twice."]).read_bytes()
    first = upload(stack, "dup.pdf", data)
    second = upload(stack, "dup-again.pdf", data)
    assert first.status_code == 202 and second.status_code == 200
    assert second.json() == {
        "id": first.json()["id"],
        "status": second.json()["status"],
        "duplicate": True,
    }
    with stack.client() as c:
        other = c.post(
            "/v1/documents", files={"file": ("dup.pdf", data)}, data={"collection": "elsewhere"}
        )
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
