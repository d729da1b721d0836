"""The Celery app: configuration only. Tasks live in workers.tasks and call into kb/ and ingest/."""

from __future__ import annotations

from celery import Celery

from kb.settings import get_settings

settings = get_settings()
if not settings.redis_url:
    raise RuntimeError(
        "KB_REDIS_URL is not set: start the stack with `make run` (which starts an embedded "
        "Redis) or point KB_REDIS_URL at a Redis server"
    )

app = Celery("kb", broker=settings.redis_url, include=["workers.tasks"])
app.conf.update(
    # Tasks are idempotent, so a task whose worker died is redelivered rather than lost.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Redis redelivers an unacked task after the visibility timeout: it must exceed the
    # slowest task (the hard time limit), or a long task would run twice at once.
    broker_transport_options={"visibility_timeout": settings.task_time_limit_s * 2},
    task_time_limit=settings.task_time_limit_s,
    task_soft_time_limit=max(settings.task_time_limit_s - 30, 5),
    worker_prefetch_multiplier=1,  # long tasks: don't hoard them on one worker
    worker_max_tasks_per_child=200,  # recycle processes: bounds leaks in native libraries
    task_ignore_result=True,  # progress lives in the catalog, not in a result backend
    task_default_queue="kb",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
