"""The Celery app: configuration only. Tasks live in workers.tasks and call into kb/ and ingest/."""

from __future__ import annotations

from celery import Celery

from kb import priority
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
    # Redis hands an unacknowledged message to another consumer after the visibility timeout.
    # It must outlast the longest run of a task, or a task still running would be delivered a
    # second time: no task runs past the hard limit, so the limit plus a minute (for the
    # message's wait in the worker's prefetch) is enough. It also bounds how long the message
    # of a worker that vanished (killed with its pool, host lost) stays hidden: about 11
    # minutes by default, where the old "twice the limit" of a 30-minute limit was an hour.
    # A worker that stops cleanly hands its messages back at once (worker_soft_shutdown_timeout
    # below), and a message lost altogether is re-driven by the sweep (kb.recovery).
    # Priorities (kb.priority): Redis keeps one list per step and a worker pops the most urgent
    # non-empty one (0 first), so a small upload's chunks pass a large document's tail.
    broker_transport_options={
        "visibility_timeout": settings.task_time_limit_s + 60,
        "priority_steps": list(priority.STEPS),
    },
    task_default_priority=priority.MAINTENANCE,
    task_time_limit=settings.task_time_limit_s,
    task_soft_time_limit=max(settings.task_time_limit_s - 30, 5),
    # Long tasks: don't hoard them on one worker. With acks late the running task's message
    # fills the one slot, so the next task is chosen when a process is free, by priority.
    worker_prefetch_multiplier=1,
    worker_max_tasks_per_child=200,  # recycle processes: bounds leaks in native libraries
    # A new worker process loads the model and warms it up (workers.tasks._load_once) before it
    # reports ready: several seconds on a busy 2-core machine, past Celery's 4 s default, after
    # which the pool would kill the process and fork another, again and again.
    worker_proc_alive_timeout=120,
    task_ignore_result=True,  # progress lives in the catalog, not in a result backend
    task_default_queue="kb",
    broker_connection_retry_on_startup=True,
    # A broker that is down fails a publish within about a second (kb.queue.QueueUnavailable,
    # the API's 503) instead of holding the upload's request.
    task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
    # A cold shutdown (SIGQUIT; `kb run` sends it on Ctrl-C) lets running tasks finish for this
    # long, then cancels them and returns their unacknowledged messages to the broker (acks
    # late), so they run again at the next start; a warm one (SIGTERM) waits for them all.
    worker_soft_shutdown_timeout=settings.shutdown_grace_s,
    worker_hijack_root_logger=False,
)
