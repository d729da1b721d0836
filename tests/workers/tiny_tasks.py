"""workers.tasks imported fresh against a real Redis, its context on a tiny model: the tasks run
in-process (Celery's `apply`, or called) as a worker would run them."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kb.context import Context
from kb.model.reference.backend import ReferenceBackend
from kb.settings import Settings, get_settings
from tests.kb.model.reference.conftest import tiny_config


@contextlib.contextmanager
def tiny_tasks(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> Iterator[ModuleType]:
    monkeypatch.setenv("KB_REDIS_URL", redis_url)
    monkeypatch.setenv("KB_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    for name in ("workers.celery_app", "workers.tasks"):
        sys.modules.pop(name, None)
    module = importlib.import_module("workers.tasks")
    ctx = Context(Settings(_env_file=None, data_dir=tmp_path / "data", **settings))  # type: ignore[call-arg]
    ctx._backend = ReferenceBackend(config=tiny_config())
    module._ctx = ctx
    try:
        yield module
    finally:
        ctx.close()
        module._ctx = None
        get_settings.cache_clear()
