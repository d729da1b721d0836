"""The page text route says where a page's text came from: a scan uploaded over HTTP, rendered by
the worker's step in-process (kb.pipeline on the app's own context, the real OCR engine), reads
back as "ocr"; a PDF with a text layer as "text_layer"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kb import pipeline
from tests.api.in_process import app_client
from tests.ingest.samples import make_scan
from tests.ingest.test_ocr import LINES
from tests.stack import API_KEY, make_pdf

USER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(tmp_path_factory.mktemp("text-source") / "data") as c:
        yield c


def upload_and_render(client: TestClient, path: Path) -> str:
    r = client.post("/v1/documents", headers=USER, files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 202, r.text
    doc_id: str = r.json()["id"]
    assert not pipeline.render_document(client.app.state.ctx, doc_id).failed  # type: ignore[attr-defined]
    return doc_id


def test_the_page_text_says_where_the_text_came_from(client: TestClient, tmp_path: Path) -> None:
    scan = upload_and_render(client, make_scan(tmp_path / "scan.jpg", LINES))
    typed = upload_and_render(client, make_pdf(tmp_path / "typed.pdf", ["Typed, not scanned."]))
    r = client.get(f"/v1/documents/{scan}/pages/1/text", params={"tier": "text"}, headers=USER)
    assert r.status_code == 200, r.text
    assert r.json()["text_source"] == "ocr" and "Rotterdam" in r.json()["text"]
    r = client.get(f"/v1/documents/{typed}/pages/1/text", params={"tier": "text"}, headers=USER)
    assert r.status_code == 200, r.text
    assert r.json()["text_source"] == "text_layer"
    assert r.json()["text"].strip() == "Typed, not scanned."
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PageText"]
    assert schema["properties"]["text_source"]["enum"] == ["text_layer", "ocr"]
