"""Starting admin jobs: the job row, then its task; a broker that cannot take it leaves no row."""

from __future__ import annotations

from kb.catalog import repo
from kb.context import Context
from kb.queue import QueueUnavailable, TaskQueue


class CollectionNotFound(LookupError):
    pass


def start_reindex(ctx: Context, queue: TaskQueue, collection: str | None) -> str:
    """Queue a reindex of `collection` (None: every collection) under the serving model version;
    its job id. Raises CollectionNotFound, or QueueUnavailable with no job left behind."""
    with ctx.session() as s:
        if collection is not None and repo.get_collection(s, collection) is None:
            raise CollectionNotFound(f"collection {collection!r} not found")
        job_id = repo.create_job(s, model_version=ctx.backend.version, collection=collection).id
    try:
        queue.enqueue_reindex(job_id)
    except QueueUnavailable:
        with ctx.session() as s:
            repo.delete_job(s, job_id)
        raise
    return job_id
