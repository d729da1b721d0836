"""A render that runs out of its budget (KB_RENDER_BUDGET_S) hands the rest of its document to
a new ingest.render task: in-process against a real Redis (the tasks sent are run in order, as a
worker would), and through the whole stack (`kb run`: a real Celery worker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import func, select

from kb import priority
from kb.catalog import repo
from kb.catalog.models import Page
from kb.context import Context
from tests.kb.test_pipeline import upload
from tests.stack import Stack, make_pdf, wait_document
from tests.workers.tiny_tasks import tiny_tasks


@pytest.fixture
def tasks(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """workers.tasks with its context on a tiny model, rendering one chunk of 2 pages a task."""
    with tiny_tasks(
        redis_url, tmp_path, monkeypatch, render_chunk_pages=2, render_budget_s=0
    ) as module:
        yield module


def test_the_rest_of_a_document_goes_on_in_new_render_tasks(
    tasks: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = tasks.ctx()
    doc_id = upload(ctx, make_pdf(tmp_path / "six.pdf", [f"Page {i} of six." for i in range(1, 7)]))
    sent: list[tuple[str, tuple[Any, ...], dict[str, Any], int]] = []
    for task in (tasks.render, tasks.encode):
        monkeypatch.setattr(
            task,
            "apply_async",
            lambda args, kwargs=None, priority=None, task=task: sent.append(
                (task.name, tuple(args), kwargs or {}, priority)
            ),
        )

    tasks.render.apply(args=(doc_id,))  # as the upload sends it
    ran = 0
    while ran < len(sent):  # a worker taking each task sent, in order
        name, args, kwargs, _ = sent[ran]
        {"ingest.render": tasks.render, "ingest.encode": tasks.encode}[name].apply(args, kwargs)
        ran += 1

    renders = [
        (args, kwargs, level) for name, args, kwargs, level in sent if name == "ingest.render"
    ]
    assert renders == [
        ((doc_id,), {"sent_through": 2}, priority.RENDER),
        ((doc_id,), {"sent_through": 4}, priority.RENDER),
    ]
    encodes = [args[1] for name, args, _, _ in sent if name == "ingest.encode"]
    assert encodes == [[1, 2], [3, 4], [5, 6]]  # each chunk's encode sent once
    with ctx.session() as s:
        doc = repo.get_document(s, doc_id)
        assert doc is not None
        assert (doc.status, doc.pages_total, doc.pages_done) == ("ready", 6, 6)
        assert [p.number for p in doc.pages] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_a_real_worker_renders_a_document_in_several_tasks(tmp_path: Path) -> None:
    pages = 12  # 3 chunks of 4 (the stack's KB_RENDER_CHUNK_PAGES), one a task
    stack = Stack(tmp_path / "data", {"KB_RENDER_BUDGET_S": "0"}).start()
    try:
        pdf = make_pdf(tmp_path / "long.pdf", [f"page {i} of {pages}" for i in range(1, pages + 1)])
        with stack.client() as c:
            r = c.post("/v1/documents", files={"file": ("long.pdf", pdf.read_bytes())})
            assert r.status_code == 202, r.text
            doc_id = r.json()["id"]
            doc = wait_document(c, doc_id, timeout=180)
        assert (doc["status"], doc["pages"], doc["pages_done"]) == ("ready", pages, pages), doc
        log = stack.log_path.read_text()
        assert log.count(f"document {doc_id}: ingest.render starts (0 earlier") == 3, stack.log()
        assert "Traceback" not in log, stack.log()
        ctx = Context(stack.settings(), migrate=False)
        try:
            with ctx.session() as s:
                of_doc = Page.document_id == doc_id
                rows = s.scalar(select(func.count()).where(of_doc))
                numbers = s.scalar(select(func.count(func.distinct(Page.number))).where(of_doc))
        finally:
            ctx.close()
        assert (rows, numbers) == (pages, pages)
    finally:
        assert stack.stop() == 0, stack.log()
