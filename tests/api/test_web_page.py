"""The web page at `/` and the OpenAPI page at `/docs`.

In-process (fast): every file the page loads is served, none names another host, the viewer's
tiers are ingest's. In a real headless Chromium (Debian's, driven by Playwright) against a real
stack (tests.stack, started once): a key, uploads by file chooser and by drop followed to ready,
pin and delete, a question answered with a citation thumbnail that opens the page viewer with
the image and the tiers' read-backs, errors shown with the server's words, the admin's reindex
and keys, and /docs; no request ever leaves the service. KB_WEB_SCREENSHOTS=docs writes the
README's screenshots (docs/web-*.png).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.web import STATIC
from ingest.tiers import TEXT, VISION_TIERS
from tests.api.in_process import app_client
from tests.conftest_services import unavailable
from tests.stack import ADMIN_KEY, API_KEY, ROOT, Stack, make_pdf

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; `make install` installs it
TIMEOUT_MS = 120_000  # rendering and encoding on a shared 2-core CPU

PDF_PAGES = [
    "Quarterly report. Revenue in the third quarter was 4.2 million euros.",
    "Staffing. The Lisbon office employs 37 engineers and 5 designers.",
]
NOTE = "Meeting note\n\nThe board approved the new warehouse in Rotterdam.\n"


# --- in-process: what the page is made of ----------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(tmp_path_factory.mktemp("web") / "data") as c:
        yield c


def _assets(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"#:]+)"', html)


def test_the_page_and_every_module_it_imports_are_served(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assets = _assets(r.text)
    assert "web/app.css" in assets and "web/js/main.js" in assets
    modules = [p.relative_to(STATIC).as_posix() for p in (STATIC / "js").glob("*.js")]
    for module in modules:  # imported from one another: "./api.js"
        text = (STATIC / module).read_text()
        for imported in re.findall(r'from "\./([\w.]+)"', text):
            assert f"js/{imported}" in modules, f"{module} imports a missing {imported}"
    for path in assets + [f"web/{m}" for m in modules]:
        r = client.get(f"/{path}")
        assert r.status_code == 200, path
        if path.endswith(".js"):  # a module is refused by the browser under another type
            assert "javascript" in r.headers["content-type"], path


def test_nothing_is_fetched_from_another_host() -> None:
    for path in STATIC.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"(?:https?:)?//[\w-]+\.[\w.-]+/", text), path


def test_docs_is_swagger_ui_from_the_service_itself(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and "SwaggerUIBundle" in r.text
    assert "cdn" not in r.text.lower() and "https://" not in r.text
    for path in _assets(r.text):
        assert client.get(path).status_code == 200, path
    assert client.get("/redoc").status_code == 404  # it would load ReDoc from a CDN


def test_the_page_is_not_part_of_the_api_contract(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/docs" not in paths


def test_the_viewers_tiers_are_ingests() -> None:
    viewer = (STATIC / "js" / "viewer.js").read_text()
    names = re.findall(r'\{ name: "(\w+)"', viewer)
    tokens = dict(re.findall(r'\{ name: "(\w+)", tokens: (\d+) \}', viewer))
    assert names == [TEXT, *(t.name for t in VISION_TIERS)]
    assert {k: int(v) for k, v in tokens.items()} == {t.name: t.tokens for t in VISION_TIERS}


# --- in a real browser, against a real stack -------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (make install)")
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    with sync_playwright() as p:
        # Debian's Chromium: Playwright downloads no browser of its own here.
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


@pytest.fixture(scope="module")
def stack(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("web-stack") / "data").start()
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: docs/ with KB_WEB_SCREENSHOTS=docs, else a temporary folder."""
    if os.environ.get("KB_WEB_SCREENSHOTS") == "docs":
        return ROOT / "docs"
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    """A fresh page of the stack (its own localStorage); every request that would leave the
    service is refused and recorded, and fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    context.set_default_timeout(30_000)
    elsewhere: list[str] = []

    def only_the_service(route: Any) -> None:
        if route.request.url.startswith(stack.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_service)
    errors: list[str] = []
    p = context.new_page()
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("dialog", lambda dialog: dialog.accept())  # "Delete ...?" confirmations
    p.goto(stack.url)
    yield p
    context.close()
    assert elsewhere == [], "the page fetched from another host"
    assert errors == [], "uncaught errors in the page"


def use_key(page: Any, key: str) -> None:
    page.fill("#key", key)
    page.click("#use-key")


def drop_file(page: Any, selector: str, name: str, data: bytes, mime: str) -> None:
    """A file dragged from the desktop and dropped: a drop event carrying a DataTransfer."""
    transfer = page.evaluate_handle(
        """([name, b64, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            return transfer;
        }""",
        [name, base64.b64encode(data).decode(), mime],
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def image_shown(page: Any, selector: str) -> None:
    page.wait_for_function(
        "(s) => [...document.querySelectorAll(s)].some((i) => i.complete && i.naturalWidth > 0)",
        arg=selector,
    )


@pytest.mark.slow
def test_upload_ask_cite_and_view_in_a_real_browser(
    page: Any, stack: Stack, shots: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    use_key(page, API_KEY)
    expect(page.locator("#key-state")).to_have_text("key accepted")
    assert page.evaluate("localStorage.getItem('kb.key')") == API_KEY

    pdf = make_pdf(tmp_path / "report.pdf", PDF_PAGES)
    with page.expect_file_chooser() as chooser:
        page.click("#choose")
    chooser.value.set_files(str(pdf))
    drop_file(page, "#drop", "note.txt", NOTE.encode(), "text/plain")
    ready = page.locator('#uploads .upload[data-status="ready"]')
    expect(ready).to_have_count(2, timeout=TIMEOUT_MS)
    expect(page.locator('.upload[data-file="report.pdf"]')).to_contain_text("ready, 2 pages")
    rows = page.locator("#documents tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator('#documents tr[data-status="ready"]')).to_have_count(2)
    page.screenshot(path=shots / "web-upload.png")

    with stack.client() as c:
        docs = {d["filename"]: d for d in c.get("/v1/documents").json()["documents"]}
    report, note = docs["report.pdf"]["id"], docs["note.txt"]["id"]

    # Pin the report, delete the note: the list and the API agree.
    page.locator(f'#documents tr[data-id="{report}"] input[type="checkbox"]').check()
    expect(page.locator(f'#documents tr[data-id="{report}"] input')).to_be_checked()
    page.locator(f'#documents tr[data-id="{note}"] button', has_text="Delete").click()
    expect(rows).to_have_count(1)
    with stack.client() as c:
        assert c.get(f"/v1/documents/{report}").json()["pinned"] is True
        assert c.get(f"/v1/documents/{note}").status_code == 404

    page.fill("#question", "How many engineers work in Lisbon?")
    with page.expect_response("**/v1/ask") as asked:
        page.click("#ask-button")
    assert asked.value.request.post_data_json["stream"] is True
    assert asked.value.headers["content-type"].startswith("text/event-stream")
    expect(page.locator("#answer")).to_have_attribute("data-state", "done", timeout=60_000)
    expect(page.locator("#answer-text")).to_have_text(re.compile(r"\b37\b"))
    thumb = page.locator(f'.thumb[data-document="{report}"][data-page="2"]')
    expect(thumb).to_be_visible()
    image_shown(page, ".thumb img")
    page.screenshot(path=shots / "web-answer.png")

    thumb.click()
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#viewer-page")).to_have_text("page 2 of 2")
    image_shown(page, "#viewer-image")
    expect(page.locator('#tiers li[data-tier="text"] pre')).to_contain_text("Lisbon office")
    for tier in VISION_TIERS:  # each tier read back (whatever the model keeps of it)
        expect(page.locator(f'#tiers li[data-tier="{tier.name}"] pre')).not_to_have_text(
            "reading…", timeout=60_000
        )
    expect(page.locator("#tiers li.failed")).to_have_count(0)
    page.screenshot(path=shots / "web-viewer.png")
    page.click("#viewer-prev")
    expect(page.locator('#tiers li[data-tier="text"] pre')).to_contain_text("Revenue")


@pytest.mark.slow
def test_errors_show_the_servers_reason(page: Any) -> None:
    from playwright.sync_api import expect

    use_key(page, "not-a-key")
    expect(page.locator("#key-state")).to_have_text("key refused")
    expect(page.locator("#messages .error")).to_contain_text("invalid API key (HTTP 401")

    use_key(page, API_KEY)
    expect(page.locator("#key-state")).to_have_text("key accepted")
    page.set_input_files("#files", [{"name": "tool.exe", "mimeType": "", "buffer": b"MZ" * 64}])
    failed = page.locator('.upload[data-file="tool.exe"][data-status="failed"]')
    expect(failed).to_contain_text("HTTP 415")

    page.fill("#collection", "nothing-here")
    page.dispatch_event("#collection", "change")
    page.fill("#question", "Anything?")
    page.click("#ask-button")
    expect(page.locator("#answer")).to_have_attribute("data-state", "failed")
    expect(page.locator("#answer-meta")).to_contain_text("HTTP 404")


def serve_stream(body: str) -> Any:
    """A route handler answering with ``body`` as server-sent events."""

    def fulfill(route: Any) -> None:
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    return fulfill


@pytest.mark.slow
def test_a_streamed_answer_is_shown_piece_by_piece(page: Any) -> None:
    """Server-sent events cut at awkward places (a comment, CRLF split between chunks, an
    unnamed event, an unfinished last one), then POST /v1/ask's stream (api/streaming.py)
    played back: pieces, the final answer with its citations, and an error mid-stream."""
    from playwright.sync_api import expect

    use_key(page, API_KEY)
    expect(page.locator("#key-state")).to_have_text("key accepted")
    events = page.evaluate(
        """async (chunks) => {
            const { readEvents } = await import("./web/js/sse.js");
            const bytes = chunks.map((s) => new TextEncoder().encode(s));
            const body = new ReadableStream({
                start(c) { bytes.forEach((b) => c.enqueue(b)); c.close(); },
            });
            const seen = [];
            await readEvents(new Response(body), (name, data) => seen.push([name, data]));
            return seen;
        }""",
        [": comment\r", "\nevent: piece\r\ndata: {\"te", 'xt": "3"}\r\n\r', "\nevent:piece\n",
         "data: {\"text\": \"7\"}\n\ndata: line one\ndata: line two\n\nevent: half"],
    )  # fmt: skip
    assert events == [
        ["piece", '{"text": "3"}'],
        ["piece", '{"text": "7"}'],
        ["message", "line one\nline two"],
    ]

    final = {
        "answer": "37",
        "found": True,
        "citations": [{"document_id": "0" * 32, "page": 2, "score": 0.9, "tier": "text"}],
        "context": {"pages": 2, "tokens": 35, "tiers": {"text": 2}, "left_out": 0},
        "model": "test",
    }
    stream = (
        'event: piece\ndata: {"text": "3"}\n\n'
        'event: piece\ndata: {"text": "7"}\n\n'
        f"event: final\ndata: {json.dumps(final)}\n\n"
    )
    page.route("**/v1/ask", serve_stream(stream))
    page.fill("#question", "How many engineers work in Lisbon?")
    page.click("#ask-button")
    expect(page.locator("#answer")).to_have_attribute("data-state", "done")
    expect(page.locator("#answer-text")).to_have_text("37")
    expect(page.locator(".thumb")).to_have_count(1)
    page.unroute("**/v1/ask")

    failing = 'event: piece\ndata: {"text": "3"}\n\nevent: error\ndata: {"detail": "boom"}\n\n'
    page.route("**/v1/ask", serve_stream(failing))
    page.click("#ask-button")
    expect(page.locator("#answer")).to_have_attribute("data-state", "failed")
    expect(page.locator("#answer-meta")).to_contain_text("boom")


@pytest.mark.slow
def test_admin_reindexes_and_manages_keys(page: Any) -> None:
    from playwright.sync_api import expect

    use_key(page, API_KEY)
    expect(page.locator("#key-state")).to_have_text("key accepted")
    expect(page.locator("#admin")).to_be_hidden()

    use_key(page, ADMIN_KEY)
    expect(page.locator("#key-state")).to_contain_text("admin key")
    expect(page.locator("#admin")).to_be_visible()
    page.click("#reindex-button")
    expect(page.locator("#reindex-job")).to_have_attribute("data-status", "done", timeout=60_000)

    # A key for one collection: the page shows that collection; revoked, the key is refused.
    page.fill("#key-name", "web-test")
    page.fill("#key-collections", "finance")
    page.click("#key-create-button")
    made = page.locator("#new-key code")
    expect(made).to_have_text(re.compile(r"\S{16,}"))
    scoped = made.text_content()
    row = page.locator("#keys tbody tr", has_text="web-test")
    expect(row).to_contain_text("finance")

    use_key(page, scoped)
    expect(page.locator("#key-state")).to_have_text("key accepted")
    expect(page.locator("#collection")).to_have_value("finance")
    expect(page.locator("#admin")).to_be_hidden()

    use_key(page, ADMIN_KEY)
    expect(page.locator("#admin")).to_be_visible()
    row.locator("button", has_text="Revoke").click()
    expect(row).to_have_count(0)
    use_key(page, scoped)
    expect(page.locator("#key-state")).to_have_text("key refused")


@pytest.mark.slow
def test_docs_renders_the_api_offline(page: Any, stack: Stack) -> None:
    page.goto(f"{stack.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    assert page.locator(".opblock-summary-path", has_text="/v1/ask").count() == 1
