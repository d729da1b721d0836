"""The process-wide wiring of the core: settings, catalog, object store, model, tensor cache,
OCR engine.

Built once per process (the API's lifespan, a Celery worker's process init) and passed down.
The model and the OCR engine are loaded lazily on first use, so processes that never encode,
answer or render never pay for them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from ingest import PageReader, TesseractReader
from kb.catalog import make_engine, session_factory, upgrade
from kb.model import load_backend
from kb.model.base import Backend
from kb.settings import Settings
from kb.store import ObjectStore, make_store
from kb.tensors import TensorCache


class Context:
    def __init__(
        self, settings: Settings, migrate: bool = True, default_threads: int | None = None
    ):
        """``default_threads``: torch threads when KB_TORCH_THREADS is unset (None: torch's
        own default, every core); a worker process passes its own (workers.tasks)."""
        self.settings = settings
        self.torch_threads = settings.torch_threads or default_threads
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url
        if migrate:
            upgrade(url)
        self.engine = make_engine(url)
        self._sessions = session_factory(self.engine)
        self.store: ObjectStore = make_store(settings)
        self.tensors = TensorCache(self.store, max_bytes=settings.tensor_cache_mb << 20)
        self._backend: Backend | None = None
        self._backend_lock = threading.Lock()
        # One model call at a time per process: torch already uses every core for one call.
        self.model_lock = threading.Lock()
        self._ocr: PageReader | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            with self._backend_lock:
                if self._backend is None:
                    if self.torch_threads:
                        import torch

                        torch.set_num_threads(self.torch_threads)
                    self._backend = load_backend(
                        self.settings.model,
                        self.settings.model_path,
                        self.settings.device,
                        answer_threshold=self.settings.answer_threshold,
                    )
        return self._backend

    @property
    def ocr(self) -> PageReader | None:
        """The OCR engine for pages without a text layer, loaded once; None with KB_OCR=off."""
        if self.settings.ocr == "off":
            return None
        if self._ocr is None:
            with self._backend_lock:
                if self._ocr is None:
                    self._ocr = TesseractReader()
        return self._ocr

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()
