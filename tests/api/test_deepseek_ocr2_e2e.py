"""The whole service on the deepseek-ocr2 backend, through its HTTP API with a real Celery worker:
a tiny random DeepSeek-OCR 2 checkpoint in KB_MODEL_PATH, loaded as real weights would be."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kb.model.deepseek_ocr2.random_init import save_random_checkpoint
from tests.stack import ADMIN_KEY, Stack, make_pdf, wait_document, wait_for

pytestmark = pytest.mark.slow

PDF_PAGES = [
    "Quarterly report. Revenue in the third quarter was 4.2 million euros.",
    "Staffing. The Lisbon office employs 37 engineers and 5 designers.",
    "Risks. The main supplier of optical sensors is located in Osaka.",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("deepseek-ocr2-e2e")
    checkpoint = save_random_checkpoint(root / "checkpoint", seed=0)
    env = {"KB_MODEL": "deepseek-ocr2", "KB_MODEL_PATH": str(checkpoint)}
    s = Stack(root / "data", env).start()
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def pdf_id(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    pdf = make_pdf(tmp_path_factory.mktemp("corpus") / "report.pdf", PDF_PAGES)
    with stack.client() as c:
        r = c.post("/v1/documents", files={"file": (pdf.name, pdf.read_bytes())})
        assert r.status_code == 202, r.text
        doc = wait_document(c, r.json()["id"], timeout=120)
    assert doc["status"] == "ready" and doc["pages"] == 3, (doc, stack.log())
    return doc["id"]


def test_health_names_the_model(stack: Stack) -> None:
    with stack.client(key=ADMIN_KEY) as c:
        model = c.get("/healthz").json()["model"]
    assert model["name"] == "deepseek-ocr2" and model["trained"] is False
    assert model["version"].startswith("deepseek-ocr2-")
    assert 0 < model["context_budget"] < 2048  # the tiny decoder's window, less the reserve


def test_ask_packs_the_pages_cites_them_and_never_overflows(stack: Stack, pdf_id: str) -> None:
    with stack.client() as c:
        r = c.post("/v1/ask", json={"question": "Where is the optical sensor supplier?"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["answer"], str) and body["model"].startswith("deepseek-ocr2-")
        # Short pages: their exact text costs less than a vision view, so all three are packed
        # at the text tier (kb.packer), well inside the decoder's window.
        context = body["context"]
        assert context["pages"] == 3 and context["tiers"] == {"text": 3}
        assert 0 < context["tokens"] < 3 * 145 and context["left_out"] == 0
        assert body["citations"] and len(body["citations"]) == 3
        assert {(cit["document_id"], cit["page"]) for cit in body["citations"]} == {
            (pdf_id, n) for n in (1, 2, 3)
        }
        assert all(cit["tier"] == "text" for cit in body["citations"])

        again = c.post("/v1/ask", json={"question": "Where is the optical sensor supplier?"})
        assert again.json()["answer"] == body["answer"]  # the same, from the cached prefix

        # a budget below every page's text fades them to vision views or leaves them out,
        # counted, never silently
        cut = c.post("/v1/ask", json={"question": "revenue?", "max_context_tokens": 150})
        assert cut.json()["context"]["pages"] + cut.json()["context"]["left_out"] == 3
        assert cut.json()["context"]["tokens"] <= 150
        # a budget beyond the model's window is refused, saying the most it can be
        budget = c.get("/healthz", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()[
            "model"
        ]["context_budget"]
        huge = c.post("/v1/ask", json={"question": "revenue?", "max_context_tokens": 10**6})
        assert huge.status_code == 422 and f"at most {budget}" in huge.json()["detail"]
        whole = c.post("/v1/ask", json={"question": "revenue?", "max_context_tokens": budget})
        assert whole.status_code == 200 and whole.json()["context"]["pages"] == 3


def test_read_back_through_the_cached_features(stack: Stack, pdf_id: str) -> None:
    with stack.client() as c:
        r = c.get(f"/v1/documents/{pdf_id}/pages/2/text", params={"tier": "base"})
        assert r.status_code == 200, r.text
        assert r.json()["tier"] == "base" and isinstance(r.json()["text"], str)
        text = c.get(f"/v1/documents/{pdf_id}/pages/2/text", params={"tier": "text"}).json()
        assert "Lisbon office" in text["text"]
        tiny = c.get(f"/v1/documents/{pdf_id}/pages/2/text", params={"tier": "tiny"})
        assert tiny.status_code == 422 and "tier" in tiny.json()["detail"]


def test_reindex_re_encodes_and_keeps_answering(stack: Stack, pdf_id: str) -> None:
    with stack.client(key=ADMIN_KEY) as admin, stack.client() as c:
        r = admin.post("/v1/admin/reindex", json={"collection": "default"})
        assert r.status_code == 202, r.text
        job: dict = {}

        def done() -> bool:
            nonlocal job
            job = admin.get(f"/v1/admin/jobs/{r.json()['job_id']}").json()
            return job["status"] in ("done", "failed")

        wait_for(done, "reindex job", timeout=120)
        assert job["status"] == "done" and job["total"] == job["done"] == 3, job
        after = c.post("/v1/ask", json={"question": "How many engineers work in Lisbon?"})
        assert after.status_code == 200 and after.json()["context"]["pages"] == 3
        assert c.get(f"/v1/documents/{pdf_id}").json()["status"] == "ready"


def test_the_tensors_are_stored_under_the_models_version(stack: Stack, pdf_id: str) -> None:
    with stack.client(key=ADMIN_KEY) as c:
        version = c.get("/healthz").json()["model"]["version"]
    stored = Path(stack.data_dir) / "objects" / "tensors" / version
    assert sorted(p.name for p in stored.iterdir()) == ["base", "small"]
    assert len(list((stored / "base").rglob("*.safetensors"))) == 3
