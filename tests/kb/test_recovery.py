"""Uploads and the sweep for stalled work, in-process on real components (SQLite, the local
store, the reference model at a tiny size) with the in-memory queue (tests/queues.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from kb import documents, recovery
from kb.catalog import repo
from kb.catalog.models import Document, Job, Page, utcnow
from kb.context import Context
from kb.keys import PAGE_IMAGES
from kb.queue import QueueUnavailable
from kb.settings import Settings
from tests.kb.test_pipeline import CountingBackend, process
from tests.queues import RecordingQueue
from tests.stack import make_pdf

STALL_S = 600


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    c = Context(Settings(data_dir=tmp_path / "data", render_chunk_pages=2, stalled_after_s=STALL_S))
    c._backend = CountingBackend()
    return c


def upload(ctx: Context, queue: RecordingQueue, path: Path) -> documents.Accepted:
    with path.open("rb") as f:
        staged = documents.stage(f, path.name, path.parent / f"{path.name}.staged", 1 << 30)
    return documents.upload(ctx, queue, staged, "default")


def age(ctx: Context, document_id: str, seconds: float) -> None:
    """Pretend the document's progress last moved `seconds` ago."""
    with ctx.session() as s:
        s.execute(
            update(Document)
            .where(Document.id == document_id)
            .values(progress_at=utcnow() - timedelta(seconds=seconds))
        )


def pages(ctx: Context, document_id: str) -> tuple[int, int, int | None, int]:
    """(page rows, distinct page numbers, pages_total, pages_done)."""
    with ctx.session() as s:
        rows = s.scalar(select(func.count()).where(Page.document_id == document_id))
        numbers = s.scalar(
            select(func.count(func.distinct(Page.number))).where(Page.document_id == document_id)
        )
        doc = repo.get_document(s, document_id)
        assert doc is not None
        return rows or 0, numbers or 0, doc.pages_total, doc.pages_done


def test_an_upload_is_queued_and_a_duplicate_is_not(ctx: Context, tmp_path: Path) -> None:
    queue = RecordingQueue()
    pdf = make_pdf(tmp_path / "a.pdf", ["One.", "Two."])
    first = upload(ctx, queue, pdf)
    assert (first.status, first.duplicate, first.queued) == ("queued", False, True)
    again = upload(ctx, queue, pdf)
    assert (again.id, again.duplicate, again.queued) == (first.id, True, False)
    assert queue.renders() == [first.id]


def test_a_queue_that_is_down_leaves_nothing_behind(ctx: Context, tmp_path: Path) -> None:
    queue = RecordingQueue(down=True)
    with pytest.raises(QueueUnavailable):
        upload(ctx, queue, make_pdf(tmp_path / "a.pdf", ["One."]))
    with ctx.session() as s:
        assert repo.list_documents(s) == []
    assert list(ctx.store.list("originals/")) == []
    queue.down = False  # the broker is back: the same upload goes through
    accepted = upload(ctx, queue, make_pdf(tmp_path / "a.pdf", ["One."]))
    assert accepted.queued and queue.renders() == [accepted.id]


def test_uploading_a_failed_document_again_restarts_it(ctx: Context, tmp_path: Path) -> None:
    queue = RecordingQueue()
    pdf = make_pdf(tmp_path / "a.pdf", ["One.", "Two."])
    first = upload(ctx, queue, pdf)
    with ctx.session() as s:
        repo.set_status(s, first.id, "failed", error="processing took longer than 10 s")

    queue.down = True  # a restart the broker refuses changes nothing
    with pytest.raises(QueueUnavailable):
        upload(ctx, queue, pdf)
    with ctx.session() as s:
        doc = repo.get_document(s, first.id)
        assert doc is not None and (doc.status, doc.error) == (
            "failed",
            "processing took longer than 10 s",
        )

    queue.down = False
    again = upload(ctx, queue, pdf)
    assert (again.id, again.status, again.duplicate, again.queued) == (
        first.id,
        "queued",
        True,
        True,
    )
    assert queue.renders() == [first.id, first.id]
    process(ctx, first.id)
    with ctx.session() as s:
        doc = repo.get_document(s, first.id)
        assert doc is not None and (doc.status, doc.error) == ("ready", None)
        assert len(repo.list_documents(s)) == 1


def test_uploading_a_stalled_document_again_requeues_it(ctx: Context, tmp_path: Path) -> None:
    queue = RecordingQueue()
    pdf = make_pdf(tmp_path / "a.pdf", ["One."])
    first = upload(ctx, queue, pdf)
    age(ctx, first.id, STALL_S - 60)  # slow, not stalled: a duplicate
    assert not upload(ctx, queue, pdf).queued
    age(ctx, first.id, STALL_S + 60)
    again = upload(ctx, queue, pdf)
    assert (again.id, again.duplicate, again.queued) == (first.id, True, True)
    assert queue.renders() == [first.id, first.id]


def test_the_sweep_redrives_stalled_work_once(ctx: Context, tmp_path: Path) -> None:
    queue = RecordingQueue()
    stalled = upload(ctx, queue, make_pdf(tmp_path / "s.pdf", ["Stalled one.", "Stalled two."]))
    moving = upload(ctx, queue, make_pdf(tmp_path / "m.pdf", ["Moving."]))
    done = upload(ctx, queue, make_pdf(tmp_path / "d.pdf", ["Done."]))
    process(ctx, done.id)
    with ctx.session() as s:
        job = repo.create_job(s, model_version="v", collection=None).id
        s.execute(
            update(Job)
            .where(Job.id == job)
            .values(done=3, progress_at=utcnow() - timedelta(seconds=STALL_S + 1))
        )
    for doc in (stalled, done):
        age(ctx, doc.id, STALL_S + 1)
    age(ctx, moving.id, STALL_S - 60)
    queue.sent.clear()

    redriven = recovery.redrive_stalled(ctx, queue)
    assert (redriven.documents, redriven.jobs) == ([stalled.id], [job])
    assert queue.sent == [("ingest.render", stalled.id), ("admin.reindex", job)]
    with ctx.session() as s:
        assert repo.get_job(s, job).done == 3  # type: ignore[union-attr]  # resumed, not reset
    # Claimed: a second sweep (another worker, a moment later) sends nothing again.
    assert recovery.redrive_stalled(ctx, queue) == recovery.Redriven()


def test_redriving_a_document_still_running_duplicates_no_page(
    ctx: Context, tmp_path: Path
) -> None:
    """The first run rendered and encoded part of the document when the sweep sent it again;
    both runs complete: the pages are there once each, the count is exact, nothing is encoded
    twice."""
    from kb import pipeline

    queue = RecordingQueue()
    texts = [f"Page {i} of five." for i in range(1, 6)]
    doc = upload(ctx, queue, make_pdf(tmp_path / "five.pdf", texts))
    first_chunks: list[list[int]] = []
    pipeline.render_document(ctx, doc.id, on_chunk=first_chunks.append)
    pipeline.encode_pages(ctx, doc.id, first_chunks[0])  # the rest of its encodes are "lost"
    age(ctx, doc.id, STALL_S + 1)
    assert recovery.redrive_stalled(ctx, queue).documents == [doc.id]

    process(ctx, doc.id)  # the re-driven render and its encodes
    for numbers in first_chunks[1:]:  # the first run's encodes turn up after all
        pipeline.encode_pages(ctx, doc.id, numbers)
    assert pages(ctx, doc.id) == (5, 5, 5, 5)
    with ctx.session() as s:
        assert repo.get_document(s, doc.id).status == "ready"  # type: ignore[union-attr]
    assert len(ctx.backend.encoded) == 5 * len(ctx.backend.tier_tokens)  # type: ignore[attr-defined]
    images = {k for k in ctx.store.list(PAGE_IMAGES)}
    assert len(images) == 5

    # A delivery after it is ready changes nothing (it does not go back to processing).
    assert pipeline.render_document(ctx, doc.id).chunks == []
    with ctx.session() as s:
        assert repo.get_document(s, doc.id).status == "ready"  # type: ignore[union-attr]


def test_pinning_is_not_progress(ctx: Context, tmp_path: Path) -> None:
    queue = RecordingQueue()
    doc = upload(ctx, queue, make_pdf(tmp_path / "a.pdf", ["One."]))
    age(ctx, doc.id, STALL_S + 1)
    with ctx.session() as s:
        repo.set_pinned(s, doc.id, True)
    assert recovery.redrive_stalled(ctx, queue).documents == [doc.id]
