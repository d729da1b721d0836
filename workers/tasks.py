"""Thin Celery tasks: ids in, calls into kb.pipeline, stable names.

Retries only for named transient errors (a broker, database or store that is briefly away), with
exponential backoff, jitter and a maximum; anything else fails the document with a message a
person can read, and the worker keeps running.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import kombu.exceptions
import redis
import urllib3.exceptions
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure, worker_process_init, worker_ready
from sqlalchemy.exc import OperationalError

from kb import objects, priority, recovery
from kb.catalog import repo
from kb.catalog.models import JobStatus
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
from kb.store import StoreUnavailable
from workers.celery_app import app
from workers.queue import CeleryQueue

log = logging.getLogger(__name__)

TRANSIENT = (
    ConnectionError,
    TimeoutError,
    OperationalError,
    urllib3.exceptions.HTTPError,
    StoreUnavailable,  # an OSError of the store: a full disk is freed, a mount comes back
    kombu.exceptions.OperationalError,  # the broker, restarting, refused a chunk's encode task
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
# A task whose worker process died under it (out of memory, a crash in a native library) is
# delivered again (task_reject_on_worker_lost): a bad moment of the machine should not lose a
# document. Twice in a row is the document itself: the next delivery fails it instead of
# killing the worker a third time.
WORKER_LOSSES_ALLOWED = 2

_ctx: Context | None = None
_redis: redis.Redis | None = None


def ctx() -> Context:
    global _ctx
    if _ctx is None:
        _ctx = Context(get_settings(), migrate=False)
    return _ctx


@worker_process_init.connect
def _load_once(**_: object) -> None:
    """Each worker process builds its context and loads the model once, before any task."""
    global _ctx, _redis
    _ctx = None  # never share a forked parent's engine or sockets
    _redis = None
    remove_abandoned(get_settings().scratch_dir)  # a killed task's temporary files
    # A stop asked for (the pool ends a task it cancels at shutdown with SIGTERM) unwinds the
    # task, so its `finally` clauses run and unless_it_killed_its_worker does not count it as
    # a worker lost; SIGKILL (out of memory, the hard time limit) still cannot be caught.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ctx().backend  # noqa: B018 - load the weights now, not inside the first task's time limit
    ctx().ocr  # noqa: B018 - and the OCR engine, once per process


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def broker() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(get_settings().redis_url or "")
    return _redis


@contextmanager
def unless_it_killed_its_worker(task: Task, document_id: str) -> Iterator[bool]:
    """Yield True to run the task, False when its last WORKER_LOSSES_ALLOWED runs never ended.

    Each start increments a counter in Redis (the broker, so it is there whenever a task is),
    keyed by the task id, which a redelivered message keeps; every ending a process lives to see
    (success, failure, a retry) deletes it. What is left counts the runs whose worker died under
    them. On a refusal the document is failed here.
    """
    key = f"kb:unfinished:{task.request.id}"
    lost = int(broker().incr(key)) - 1
    # Outlives every redelivery (the visibility timeout is the hard limit plus a minute).
    broker().expire(key, 4 * get_settings().task_time_limit_s)
    log.info(
        "document %s: %s starts (%d earlier run(s) did not finish)", document_id, task.name, lost
    )
    if lost >= WORKER_LOSSES_ALLOWED:
        broker().delete(key)
        fail_document(
            ctx(),
            document_id,
            f"processing this document stopped the worker {lost} times (it ran out of memory "
            "or crashed), so it was not tried again; split it into smaller files or upload a "
            "PDF export",
        )
        yield False
        return
    try:
        yield True
    finally:
        broker().delete(key)


def _unexpected(document_id: str, exc: BaseException) -> None:
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = app.conf.task_soft_time_limit
        fail_document(
            ctx(),
            document_id,
            f"processing took longer than {limit} s and was stopped; split the document into "
            "smaller files",
        )
    else:
        log.exception("document %s: unexpected error", document_id)  # the details: log only
        fail_document(ctx(), document_id, "an internal error stopped processing this document")


@app.task(name="ingest.render", bind=True, priority=priority.RENDER, **RETRY)
def render(self, document_id: str) -> None:
    with unless_it_killed_its_worker(self, document_id) as run:
        if run:
            _render(self, document_id)


def _render(self, document_id: str) -> None:  # type: ignore[no-untyped-def]
    try:
        render_document(ctx(), document_id, on_chunk=lambda n: _send_encode(document_id, n))
    except TRANSIENT:
        if self.request.retries >= self.max_retries:
            fail_document(ctx(), document_id, "storage or database unavailable; try again")
        raise
    except Exception as exc:
        _unexpected(document_id, exc)


def _send_encode(document_id: str, page_numbers: list[int]) -> None:
    """A chunk is queued as urgent as its document is young (kb.priority)."""
    encode.apply_async(
        (document_id, page_numbers), priority=priority.encode_priority(min(page_numbers))
    )


@app.task(name="ingest.encode", bind=True, **RETRY)
def encode(self, document_id: str, page_numbers: list[int]) -> None:
    with unless_it_killed_its_worker(self, document_id) as run:
        if run:
            _encode(self, document_id, page_numbers)


def _encode(self, document_id: str, page_numbers: list[int]) -> None:  # type: ignore[no-untyped-def]
    try:
        encode_pages(ctx(), document_id, page_numbers)
    except TRANSIENT:
        if self.request.retries >= self.max_retries:
            fail_document(ctx(), document_id, "storage or database unavailable; try again")
        raise
    except Exception as exc:
        _unexpected(document_id, exc)


@app.task(name="admin.reindex", priority=priority.REINDEX, **RETRY)
def reindex(job_id: str) -> None:
    for batch in reindex_plan(ctx(), job_id, REINDEX_BATCH):
        reindex_batch.delay(job_id, batch)


@app.task(name="admin.reindex_batch", priority=priority.REINDEX, **RETRY)
def reindex_batch(job_id: str, page_ids: list[int]) -> None:
    reindex_pages(ctx(), job_id, page_ids)


@app.task(name="maintenance.sweep_store", **RETRY)
def sweep_store() -> None:
    objects.sweep(ctx())


@app.task(name="maintenance.sweep_stalled", **RETRY)
def sweep_stalled() -> None:
    recovery.redrive_stalled(ctx(), CeleryQueue())


def _send_sweep_stalled() -> None:
    try:
        sweep_stalled.delay()
    except Exception:  # a broker away now is tried again at the next interval
        log.warning("could not queue the sweep for stalled work", exc_info=True)


@worker_ready.connect
def _sweep_at_start(sender: object, **_: object) -> None:
    """Objects a killed task left behind are collected once a worker is back; stalled work is
    re-driven now and every KB_SWEEP_INTERVAL_S.

    The period comes from the worker's own timer (its event loop, in the main process) rather
    than Celery beat: no extra process or schedule file, it runs wherever a worker runs, and
    several workers sweeping at once is harmless (each stalled row is claimed by one of them).
    """
    sweep_store.delay()
    _send_sweep_stalled()
    timer = sender.timer  # type: ignore[attr-defined]  # the consumer's
    timer.call_repeatedly(get_settings().sweep_interval_s, _send_sweep_stalled)


@task_failure.connect
def _fail_on_hard_time_limit(
    sender: Task | None = None,
    exception: BaseException | None = None,
    args: tuple[object, ...] = (),
    **_: object,
) -> None:
    """A task killed at the hard time limit has its message acknowledged and never runs
    again, so its document (or job) would stay processing: it is failed instead.

    This runs in the worker's main process, which saw the limit pass, just before it kills the
    task's process; that process may still hold the catalog's write lock (SQLite), so the
    failing is sent as a task, run once the process is gone, rather than done here.
    """
    if not isinstance(exception, TimeLimitExceeded) or sender is None or not args:
        return
    try:
        fail_timed_out.delay(sender.name, str(args[0]))
    except Exception:  # the sweep still finds the row stalled and sends its task again
        log.exception("could not queue the failing of %s(%s)", sender.name, args[0])


@app.task(name="maintenance.fail_timed_out", **RETRY)
def fail_timed_out(task_name: str, row_id: str) -> None:
    message = (
        f"processing took longer than {app.conf.task_time_limit} s and was stopped; split the "
        "document into smaller files"
    )
    if task_name in ("ingest.render", "ingest.encode"):
        fail_document(ctx(), row_id, message)
    elif task_name in ("admin.reindex", "admin.reindex_batch"):
        with ctx().session() as s:
            repo.set_job_status(s, row_id, JobStatus.FAILED, error=message)
