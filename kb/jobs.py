"""Admin jobs: starting a reindex (the job row, then its task; a broker that cannot take it
leaves no row) and cancelling one."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kb import objects
from kb.catalog import repo
from kb.catalog.models import JobStatus
from kb.context import Context
from kb.queue import QueueUnavailable, TaskQueue

# A model version names a folder of the object store (kb.keys.tensor_key) and fits jobs'
# model_version column: "reference-0123456789ab", "deepseek-ocr2-...".
MODEL_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class CollectionNotFound(LookupError):
    pass


class JobNotFound(LookupError):
    pass


class JobFinished(ValueError):
    """The job is already done, failed or cancelled: nothing to cancel."""


class WholeCatalogOnly(ValueError):
    """A reindex to another model version must re-encode every collection: the catalog serves
    one version."""


@dataclass
class Started:
    job_id: str
    created: bool  # False: an identical job was already queued or running, and this is it


def start_reindex(
    ctx: Context, queue: TaskQueue, collection: str | None, model_version: str | None = None
) -> Started:
    """Queue a reindex of `collection` (None: every collection) for `model_version` (None: the
    version this process runs), or return the identical job already queued or running.

    Raises CollectionNotFound, WholeCatalogOnly, ValueError for a malformed version, or
    QueueUnavailable with no job left behind.
    """
    target = model_version or ctx.backend.version
    if not re.fullmatch(MODEL_VERSION_PATTERN, target):
        raise ValueError(f"model_version must match {MODEL_VERSION_PATTERN}")
    with ctx.session() as s:
        if collection is not None and repo.get_collection(s, collection) is None:
            raise CollectionNotFound(f"collection {collection!r} not found")
        serving = repo.serving_version(s)
        if collection is not None and serving is not None and target != serving:
            raise WholeCatalogOnly(
                f"the catalog serves model version {serving}: a reindex to {target} must cover "
                "every collection (leave out `collection`)"
            )
        job, created = repo.start_job(s, model_version=target, collection=collection)
        job_id = job.id
    if not created:
        return Started(job_id, created=False)
    try:
        queue.enqueue_reindex(job_id)
    except QueueUnavailable:
        with ctx.session() as s:
            repo.delete_job(s, job_id)
        raise
    return Started(job_id, created=True)


def cancel(ctx: Context, job_id: str) -> None:
    """Cancel a queued or running job: its batches still to run do nothing, its pages keep
    serving the version they had, and the tensors it wrote for its version that no page serves
    are removed. Raises JobNotFound or JobFinished."""
    with ctx.session() as s:
        job = repo.get_job(s, job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
        if not repo.set_job_status(s, job_id, JobStatus.CANCELLED):
            raise JobFinished(f"job {job_id} is already {job.status}; there is nothing to cancel")
        target, hashes = job.model_version, [p.content_hash for p in repo.job_pages(s, job_id)]
    # A batch still writing collects what it wrote once it finds the job cancelled.
    objects.collect_version(ctx, target, hashes)
