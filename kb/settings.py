"""One settings object, built once and imported everywhere (env prefix KB_, see .env.example)."""

from __future__ import annotations

import os
import secrets
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KB_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 8000

    # Unset means the embedded default: SQLite under data_dir, an embedded Redis, a local store.
    database_url: str | None = None
    redis_url: str | None = None
    s3_endpoint: str | None = None  # host:port, e.g. minio:9000
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = "kb"
    s3_secure: bool = False  # https to the S3 endpoint

    model: Literal["reference", "deepseek-ocr2"] = "reference"
    model_path: Path | None = None  # weights directory or file; default: the shipped weights
    device: str = "cpu"
    # The reference reader's "no answer" threshold; unset: the one calibrated into its weights
    # file. Higher invents less and says "not found" more (docs/benchmarks.md measures 6.29).
    answer_threshold: float | None = None
    # torch threads per process; unset = torch's default (every core) in the API, one in each
    # worker process (workers.tasks). On a shared 2-core machine one thread was measured
    # several times faster (docs/benchmarks.md); more cores: more worker processes.
    torch_threads: int | None = Field(None, ge=1)
    # How pages without a text layer (scans, photos) get their text tier: Tesseract OCR at
    # render time (~1 s a page on one core, docs/benchmarks.md), or "off": an empty text tier.
    ocr: Literal["tesseract", "off"] = "tesseract"

    api_key: SecretStr | None = None  # unset: generated once, kept in data_dir
    admin_key: SecretStr | None = None

    max_upload_mb: int = Field(200, ge=1)
    # Pages one document may have, checked before any page is rendered (PDF, XPS, TIFF frames,
    # EPUB and laid-out text alike): ~2,000 pages is a long book; 20,000 tiny pages held a
    # worker for half an hour.
    max_pages_per_document: int = Field(2000, ge=1)
    # A request body that stalls this long between two chunks is dropped with 408: a client that
    # declares a Content-Length and never sends it must not hold a connection forever.
    body_read_timeout_s: float = Field(30.0, gt=0)
    # Questions (and vision read-backs) running or waiting for the model at once; one more is
    # answered 429 with Retry-After instead of queueing behind the model lock without bound.
    max_asks_in_flight: int = Field(4, ge=1)
    # Pages rendered and encoded per task: one encoder batch (kb.pipeline.ENCODE_BATCH), so a
    # document's encode tasks spread evenly over the worker processes.
    render_chunk_pages: int = Field(8, ge=1)
    # Hard limit of one task (the soft one, which fails the document with a message, is 30 s
    # less, workers.celery_app). It bounds how long a frozen task holds its message (the
    # broker's visibility timeout follows it). A render task stops at KB_RENDER_BUDGET_S and
    # hands the rest of the document on, so no document's size is bound by it; the longest
    # task is then a render's budget plus one chunk (a chunk of pages is encoded in seconds).
    task_time_limit_s: int = Field(600, ge=10)
    # Seconds one render task renders before it hands the rest of the document to a new render
    # task, which resumes after the last page stored (kb.pipeline.render_document). Checked
    # between chunks, so a task runs this plus one chunk (16 scanned pages at ~1 s of OCR
    # each) plus opening the document: keep it well under the soft time limit (570 s by
    # default). A text PDF renders at ~35 pages/s, so 240 s holds the longest allowed one
    # whole; a scanned one (OCR, ~0.6-1 s a page) continues every ~240-400 pages.
    render_budget_s: float = Field(240.0, ge=0)
    # A queued or processing document (a running reindex job) whose progress has not moved this
    # long is re-driven by the sweep (kb.recovery). Longer than the visibility timeout
    # (task_time_limit_s + 60 s), so a message Redis restores by itself is not sent again too.
    stalled_after_s: int = Field(900, ge=1)
    sweep_interval_s: int = Field(300, ge=1)  # how often each worker sweeps for stalled work
    # Ctrl-C on `make run`: running tasks get this long to finish, then they are handed back
    # to the broker (a chunk is seconds of work; a render resumes after its pages stored).
    shutdown_grace_s: float = Field(10.0, ge=0)
    # Celery worker processes: one per core, each with one torch thread (workers.tasks), so no
    # core waits on another; the encode chunks of one document spread over them.
    worker_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # A worker is alive when heard from within this many seconds: it writes a heartbeat to
    # Redis every third of it, and /healthz answers 503 when no worker is alive. 30 s: three
    # beats missed, yet a dead worker shows within half a minute.
    worker_alive_s: int = Field(30, ge=3)
    tensor_cache_mb: int = Field(1024, ge=1)  # RAM for cached page tensors in the API process

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'catalog.sqlite3').resolve()}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def scratch_dir(self) -> Path:
        """Where tasks keep temporary files (kb.scratch); a killed task's are removed later."""
        return self.data_dir / "tmp"

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_endpoint)

    def key(self, name: Literal["api", "admin"]) -> str:
        """The API or admin key: from settings, else generated once and kept in data_dir."""
        given = self.api_key if name == "api" else self.admin_key
        if given is not None:
            value = given.get_secret_value()
            if self.env == "production" and (len(value) < 16 or value.startswith("change")):
                raise ValueError(f"KB_{name.upper()}_KEY is a placeholder; set a real secret")
            return value
        path = self.data_dir / f"{name}_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.data_dir, prefix=f".{name}_key.")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600
                    f.write(secrets.token_urlsafe(24))
                # Two processes starting at once must agree on one key: linking fails if the
                # other one got there first, and then its key is the one.
                path.hardlink_to(tmp)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
