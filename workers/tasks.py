"""Thin Celery tasks: ids in, calls into kb.pipeline, stable names.

Retries only for named transient errors (a broker, database or store that is briefly away), with
exponential backoff, jitter and a maximum; anything else fails the document with a message a
person can read, and the worker keeps running.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import kombu.exceptions
import redis
import urllib3.exceptions
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)
from sqlalchemy.exc import OperationalError

from kb import metrics, objects, priority, recovery, serving
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
from workers.queue import CeleryQueue, heartbeat, stopped

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
# torch threads of a worker process unless KB_TORCH_THREADS says otherwise: one. A worker's
# model calls are many short ones (a text page, a batch of 8 small renders), and every parallel
# op ends at a barrier where each thread waits for the slowest: on the 2-core machine shared
# with a training run, two threads made ingest 2.6 times slower than one (0.55 against 1.41
# pages/s, docs/benchmarks.md, "Ingest end to end"). More cores: more worker processes
# (KB_WORKER_CONCURRENCY), which never wait on each other.
WORKER_TORCH_THREADS = 1

_ctx: Context | None = None
_redis: redis.Redis | None = None


def ctx() -> Context:
    global _ctx
    if _ctx is None:
        _ctx = Context(get_settings(), migrate=False, default_threads=WORKER_TORCH_THREADS)
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
    ctx().backend.warm_up()  # load the weights now, not inside the first task's time limit
    ctx().ocr  # noqa: B018 - and the OCR engine, once per process
    try:
        serving.claim(ctx())  # an empty catalog serves the version of the first process
    except OperationalError:  # the catalog is away: the API, or the next process, records it
        log.warning("could not record the serving model version", exc_info=True)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def broker() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(get_settings().redis_url or "")
    return _redis


def worker_metrics() -> metrics.WorkerMetrics:
    """This process's side of the metrics every worker adds up in Redis (kb.metrics)."""
    return metrics.WorkerMetrics(broker())


@contextmanager
def unless_it_killed_its_worker(
    task: Task, what: str, fail: Callable[[int], None]
) -> Iterator[bool]:
    """Yield True to run the task, False when its last WORKER_LOSSES_ALLOWED runs never ended.

    Each start increments a counter in Redis (the broker, so it is there whenever a task is),
    keyed by the task id, which a redelivered message keeps; every ending a process lives to see
    (success, failure, a retry) deletes it. What is left counts the runs whose worker died under
    them. On a refusal `fail(runs lost)` fails the task's document or job. `what` names it in
    the log: "document <id>", "job <id>".
    """
    key = f"kb:unfinished:{task.request.id}"
    lost = int(broker().incr(key)) - 1
    # Outlives every redelivery (the visibility timeout is the hard limit plus a minute).
    broker().expire(key, 4 * get_settings().task_time_limit_s)
    log.info("%s: %s starts (%d earlier run(s) did not finish)", what, task.name, lost)
    if lost >= WORKER_LOSSES_ALLOWED:
        broker().delete(key)
        fail(lost)
        yield False
        return
    try:
        yield True
    finally:
        broker().delete(key)


def _document_lost_its_worker(document_id: str) -> Callable[[int], None]:
    return lambda lost: fail_document(
        ctx(),
        document_id,
        f"processing this document stopped the worker {lost} times (it ran out of memory or "
        "crashed), so it was not tried again; split it into smaller files or upload a PDF export",
    )


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
def render(self, document_id: str, sent_through: int = 0) -> None:
    """Render the document for up to KB_RENDER_BUDGET_S, then hand the rest to a new render
    task. ``sent_through``: the last page whose encode the task before this one sent (0 from
    the upload and the sweep, whose renders send every stored page's unfinished encode)."""
    with unless_it_killed_its_worker(
        self, f"document {document_id}", _document_lost_its_worker(document_id)
    ) as run:
        if run:
            _render(self, document_id, sent_through)


def _render(self, document_id: str, sent_through: int) -> None:  # type: ignore[no-untyped-def]
    try:
        result = render_document(
            ctx(),
            document_id,
            on_chunk=lambda n: _rendered(document_id, n),
            sent_through=sent_through,
            on_unsent=lambda n: _send_encode(document_id, n),
        )
        if result.next_page is not None:
            _send_render(document_id, sent_through=result.next_page - 1)
    except TRANSIENT:
        if self.request.retries >= self.max_retries:
            fail_document(ctx(), document_id, "storage or database unavailable; try again")
        raise
    except Exception as exc:
        _unexpected(document_id, exc)


def _rendered(document_id: str, page_numbers: list[int]) -> None:
    worker_metrics().add(metrics.PAGES_RENDERED, len(page_numbers))
    _send_encode(document_id, page_numbers)


def _send_render(document_id: str, sent_through: int) -> None:
    """The rest of a document, from page ``sent_through + 1``: a render task like the upload's,
    at its priority (kb.priority), which resumes after the pages stored. A broker that refuses
    it is a transient error: this task is retried, resuming likewise."""
    render.apply_async((document_id,), {"sent_through": sent_through}, priority=priority.RENDER)


def _send_encode(document_id: str, page_numbers: list[int]) -> None:
    """A chunk is queued as urgent as its document is young (kb.priority)."""
    encode.apply_async(
        (document_id, page_numbers), priority=priority.encode_priority(min(page_numbers))
    )


@app.task(name="ingest.encode", bind=True, **RETRY)
def encode(self, document_id: str, page_numbers: list[int]) -> None:
    with unless_it_killed_its_worker(
        self, f"document {document_id}", _document_lost_its_worker(document_id)
    ) as run:
        if run:
            _encode(self, document_id, page_numbers)


def _encode(self, document_id: str, page_numbers: list[int]) -> None:  # type: ignore[no-untyped-def]
    try:
        if encode_pages(ctx(), document_id, page_numbers) != (0, None):  # else it is gone
            worker_metrics().add(metrics.PAGES_ENCODED, len(page_numbers))
    except TRANSIENT:
        if self.request.retries >= self.max_retries:
            fail_document(ctx(), document_id, "storage or database unavailable; try again")
        raise
    except Exception as exc:
        _unexpected(document_id, exc)


@app.task(name="admin.reindex", bind=True, priority=priority.REINDEX, **RETRY)
def reindex(self, job_id: str) -> None:
    def fan_out() -> None:
        for batch in reindex_plan(ctx(), job_id, REINDEX_BATCH):
            reindex_batch.delay(job_id, batch)

    _job_step(self, job_id, fan_out)


@app.task(name="admin.reindex_batch", bind=True, priority=priority.REINDEX, **RETRY)
def reindex_batch(self, job_id: str, page_ids: list[int]) -> None:
    _job_step(self, job_id, lambda: reindex_pages(ctx(), job_id, page_ids))


def _job_step(self: Task, job_id: str, step: Callable[[], object]) -> None:
    """Run one task of a reindex job; a batch that fails for good fails the job, saying why."""
    with unless_it_killed_its_worker(self, f"job {job_id}", _job_lost_its_worker(job_id)) as run:
        if not run:
            return
        try:
            step()
        except TRANSIENT:
            if self.request.retries >= self.max_retries:
                fail_job(job_id, "storage or database unavailable; reindex again")
            raise
        except SoftTimeLimitExceeded:
            limit = app.conf.task_soft_time_limit
            fail_job(job_id, f"re-encoding a batch of pages took longer than {limit} s")
        except Exception:
            log.exception("job %s: unexpected error", job_id)  # the details: log only
            fail_job(job_id, "an internal error stopped re-encoding a batch of pages")


def _job_lost_its_worker(job_id: str) -> Callable[[int], None]:
    return lambda lost: fail_job(
        job_id,
        f"re-encoding a batch of pages stopped the worker {lost} times (it ran out of memory "
        "or crashed), so it was not tried again",
    )


def fail_job(job_id: str, error: str) -> None:
    log.warning("job %s failed: %s", job_id, error)
    with ctx().session() as s:
        repo.set_job_status(s, job_id, JobStatus.FAILED, error=error)


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


def _beat(hostname: str) -> None:
    try:
        heartbeat(broker(), hostname)
    except redis.RedisError:  # the broker is away: the worker looks dead until it is back
        log.warning("could not write this worker's heartbeat", exc_info=True)


@worker_ready.connect
def _heartbeat(sender: object, **_: object) -> None:
    """Alive now and every third of KB_WORKER_ALIVE_S, from the worker's own timer (in the
    main process, as the sweep's): /healthz counts the workers whose heartbeat is fresh."""
    hostname: str = sender.hostname  # type: ignore[attr-defined]
    _beat(hostname)
    timer = sender.timer  # type: ignore[attr-defined]
    timer.call_repeatedly(get_settings().worker_alive_s / 3, _beat, (hostname,))


@worker_shutdown.connect
def _stopped(sender: object, **_: object) -> None:
    try:
        stopped(broker(), sender.hostname)  # type: ignore[attr-defined]
    except redis.RedisError:  # it expires by itself
        log.warning("could not remove this worker's heartbeat", exc_info=True)


# Task metrics (kb.metrics, added up in Redis), recorded where the task runs: its pool process.
_started: dict[str, float] = {}  # task id -> time.monotonic() at its start


@task_prerun.connect
def _task_started(task_id: str, **_: object) -> None:
    _started[task_id] = time.monotonic()


@task_postrun.connect
def _task_ended(task_id: str, task: Task, **_: object) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        worker_metrics().observe(metrics.TASK_SECONDS, time.monotonic() - started, task=task.name)


@task_retry.connect
def _task_retried(sender: Task | None = None, **_: object) -> None:
    worker_metrics().add(metrics.TASK_RETRIES, task=sender.name if sender else "unknown")


@task_failure.connect
def _task_failed(sender: Task | None = None, **_: object) -> None:
    """Every failure: an error in the task's process, and the hard time limit, which the main
    process sees."""
    worker_metrics().add(metrics.TASK_FAILURES, task=sender.name if sender else "unknown")


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
    limit = app.conf.task_time_limit
    if task_name in ("ingest.render", "ingest.encode"):
        fail_document(
            ctx(),
            row_id,
            f"processing took longer than {limit} s and was stopped; split the document into "
            "smaller files",
        )
    elif task_name in ("admin.reindex", "admin.reindex_batch"):
        fail_job(row_id, f"re-encoding a batch of pages took longer than {limit} s and was stopped")
