"""The Celery app's reliability settings, read from the app the workers actually run."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.fixture(scope="module")
def celery_app(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from kb.settings import get_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KB_REDIS_URL", "redis://127.0.0.1:1/0")  # never connected to here
        mp.setenv("KB_DATA_DIR", str(tmp_path_factory.mktemp("celery")))
        mp.setenv("KB_TASK_TIME_LIMIT_S", "600")
        get_settings.cache_clear()
        for name in ("workers.celery_app", "workers.tasks"):
            sys.modules.pop(name, None)
        module = importlib.import_module("workers.celery_app")
        importlib.import_module("workers.tasks")
        yield module.app
        get_settings.cache_clear()


def test_tasks_have_stable_names(celery_app) -> None:  # type: ignore[no-untyped-def]
    names = {n for n in celery_app.tasks if not n.startswith("celery.")}
    assert names == {
        "ingest.render",
        "ingest.encode",
        "admin.reindex",
        "admin.reindex_batch",
        "maintenance.sweep_store",
        "maintenance.sweep_stalled",
        "maintenance.fail_timed_out",
    }


def test_reliability_settings(celery_app) -> None:  # type: ignore[no-untyped-def]
    conf = celery_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_time_limit == 600
    # Longer than any task can run, and not much longer: a vanished worker's message is
    # hidden for minutes, not an hour.
    assert 600 < conf.broker_transport_options["visibility_timeout"] <= 600 + 120
    assert conf.worker_soft_shutdown_timeout > 0  # Ctrl-C: finish or hand back
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_max_tasks_per_child


def test_tasks_carry_the_fair_queue_priorities(celery_app) -> None:  # type: ignore[no-untyped-def]
    from kb import priority

    assert celery_app.conf.broker_transport_options["priority_steps"] == list(priority.STEPS)
    assert celery_app.tasks["ingest.render"].priority == priority.RENDER
    assert celery_app.tasks["admin.reindex"].priority == priority.REINDEX
    assert celery_app.tasks["admin.reindex_batch"].priority == priority.REINDEX


def test_only_transient_errors_are_retried(celery_app) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import OperationalError

    for name in ("ingest.render", "ingest.encode", "admin.reindex", "admin.reindex_batch"):
        task = celery_app.tasks[name]
        assert OperationalError in task.autoretry_for and ConnectionError in task.autoretry_for
        assert Exception not in task.autoretry_for and ValueError not in task.autoretry_for
        assert task.retry_jitter and task.retry_backoff and task.max_retries == 5
        assert task.acks_late


def test_the_broker_url_is_required(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kb.settings import get_settings

    monkeypatch.delenv("KB_REDIS_URL", raising=False)
    monkeypatch.setenv("KB_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    saved = sys.modules.pop("workers.celery_app", None)
    try:
        with pytest.raises(RuntimeError, match="KB_REDIS_URL"):
            importlib.import_module("workers.celery_app")
    finally:
        get_settings.cache_clear()
        if saved is not None:
            sys.modules["workers.celery_app"] = saved


def test_a_broker_that_is_down_fails_a_publish_fast(celery_app) -> None:  # type: ignore[no-untyped-def]
    import time

    from kb.queue import QueueUnavailable
    from workers.queue import CeleryQueue

    queue = CeleryQueue()  # KB_REDIS_URL is a port nothing listens on
    started = time.monotonic()
    with pytest.raises(QueueUnavailable):
        queue.enqueue_render("0" * 36)
    with pytest.raises(QueueUnavailable):
        queue.ping()
    assert time.monotonic() - started < 15
