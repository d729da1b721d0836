"""Thin Celery tasks: ids in, calls into kb.pipeline, stable names.

Retries only for named transient errors (a broker, database or store that is briefly away), with
exponential backoff, jitter and a maximum; anything else fails the document with a message a
person can read, and the worker keeps running.
"""

from __future__ import annotations

import logging

import urllib3.exceptions
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready
from sqlalchemy.exc import OperationalError

from kb import objects
from kb.context import Context
from kb.pipeline import (
    encode_pages,
    fail_document,
    reindex_pages,
    reindex_plan,
    render_document,
)
from kb.scratch import remove_abandoned
from kb.settings import get_settings
from workers.celery_app import app

log = logging.getLogger(__name__)

TRANSIENT = (
    ConnectionError,
    TimeoutError,
    OperationalError,
    urllib3.exceptions.HTTPError,
)
RETRY = dict(
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=5,
    acks_late=True,
)
REINDEX_BATCH = 16

_ctx: Context | None = None


def ctx() -> Context:
    global _ctx
    if _ctx is None:
        _ctx = Context(get_settings(), migrate=False)
    return _ctx


@worker_process_init.connect
def _load_once(**_: object) -> None:
    """Each worker process builds its context and loads the model once, before any task."""
    global _ctx
    _ctx = None  # never share a forked parent's engine or sockets
    remove_abandoned(get_settings().scratch_dir)  # a killed task's temporary files
    ctx().backend  # noqa: B018 - load the weights now, not inside the first task's time limit


def _unexpected(document_id: str, exc: BaseException) -> None:
    if isinstance(exc, SoftTimeLimitExceeded):
        fail_document(ctx(), document_id, "processing took too long and was stopped")
    else:
        log.exception("document %s: unexpected error", document_id)
        fail_document(ctx(), document_id, f"internal error while processing: {exc}")


@app.task(name="ingest.render", bind=True, **RETRY)
def render(self, document_id: str) -> None:
    try:
        render_document(ctx(), document_id, on_chunk=lambda n: encode.delay(document_id, n))
    except TRANSIENT:
        if self.request.retries >= self.max_retries:
            fail_document(ctx(), document_id, "storage or database unavailable; try again")
        raise
    except Exception as exc:
        _unexpected(document_id, exc)


@app.task(name="ingest.encode", bind=True, **RETRY)
def encode(self, document_id: str, page_numbers: list[int]) -> None:
    try:
        encode_pages(ctx(), document_id, page_numbers)
    except TRANSIENT:
        if self.request.retries >= self.max_retries:
            fail_document(ctx(), document_id, "storage or database unavailable; try again")
        raise
    except Exception as exc:
        _unexpected(document_id, exc)


@app.task(name="admin.reindex", **RETRY)
def reindex(job_id: str) -> None:
    for batch in reindex_plan(ctx(), job_id, REINDEX_BATCH):
        reindex_batch.delay(job_id, batch)


@app.task(name="admin.reindex_batch", **RETRY)
def reindex_batch(job_id: str, page_ids: list[int]) -> None:
    reindex_pages(ctx(), job_id, page_ids)


@app.task(name="maintenance.sweep_store", **RETRY)
def sweep_store() -> None:
    objects.sweep(ctx())


@worker_ready.connect
def _sweep_at_start(**_: object) -> None:
    """Objects a killed task left behind are collected once a worker is back."""
    sweep_store.delay()
