"""The real app in-process (FastAPI's TestClient), without a broker: the queue port is a
RecordingQueue, the keys are the stack's, every other setting given or its embedded default."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from kb.settings import Settings
from tests.queues import RecordingQueue
from tests.stack import ADMIN_KEY, API_KEY


@contextlib.contextmanager
def app_client(
    data_dir: Path, queue: RecordingQueue | None = None, **settings: Any
) -> Iterator[TestClient]:
    given = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
        **settings,
    )
    with TestClient(create_app(given, queue=queue or RecordingQueue())) as c:
        yield c
