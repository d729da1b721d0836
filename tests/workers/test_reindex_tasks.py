"""The reindex tasks run in-process (Celery's `apply`) against a real Redis, the catalog and the
store: a batch that fails for good fails its job with a message, and a worker running another
model version refuses a job, saying which versions and what to do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from kb import jobs, pipeline
from kb.catalog import repo
from kb.context import Context
from kb.keys import page_image_key
from tests.kb.test_pipeline import process, upload
from tests.queues import RecordingQueue
from tests.stack import make_pdf
from tests.workers.tiny_tasks import tiny_tasks


@pytest.fixture
def tasks(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """workers.tasks with its context on a tiny model (a worker's, built by the test)."""
    with tiny_tasks(redis_url, tmp_path, monkeypatch, render_chunk_pages=2) as module:
        yield module


def job(ctx: Context, job_id: str) -> tuple[str, str | None]:
    with ctx.session() as s:
        got = repo.get_job(s, job_id)
        assert got is not None
        return got.status, got.error


def test_a_batch_that_fails_for_good_fails_its_job(tasks: ModuleType, tmp_path: Path) -> None:
    ctx = tasks.ctx()
    doc = upload(ctx, make_pdf(tmp_path / "a.pdf", ["One.", "Two.", "Three."]))
    process(ctx, doc)
    job_id = jobs.start_reindex(ctx, RecordingQueue(), None).job_id
    batches = pipeline.reindex_plan(ctx, job_id, batch_size=2)
    with ctx.session() as s:
        lost = repo.get_page(s, doc, 1)
        assert lost is not None
    ctx.store.delete(page_image_key(lost.content_hash))  # a page image the store lost

    tasks.reindex_batch.apply(args=(job_id, batches[0]))
    assert job(ctx, job_id) == ("failed", "an internal error stopped re-encoding a batch of pages")
    # Its other batch, delivered after, does nothing: the job stays failed, nothing switches.
    tasks.reindex_batch.apply(args=(job_id, batches[1]))
    assert job(ctx, job_id)[0] == "failed"


def test_a_worker_running_another_version_refuses_the_job(
    tasks: ModuleType, tmp_path: Path
) -> None:
    ctx = tasks.ctx()
    process(ctx, upload(ctx, make_pdf(tmp_path / "a.pdf", ["One."])))
    other = "reference-0123456789ab"
    job_id = jobs.start_reindex(ctx, RecordingQueue(), None, model_version=other).job_id
    tasks.reindex.apply(args=(job_id,))
    status, error = job(ctx, job_id)
    assert status == "failed"
    assert error is not None and error.startswith(
        f"a worker running model version {ctx.backend.version} took this job, which re-encodes "
        f"for {other}"
    )
