"""The sweep for unfinished work: documents and reindex jobs whose progress stalled are sent again.

Work is lost between the catalog and the broker when a broker without persistence restarts, a
message is dropped, or a task dies in a way that neither acknowledges nor hands it back. The
catalog knows what is unfinished (a queued or processing document, a queued or running job) and
when it last moved (progress_at); whatever has not moved for KB_STALLED_AFTER_S is sent again.

Sending again is safe because the tasks are idempotent: render upserts page rows by (document,
number) and content-addressed images, encode skips pages already encoded under the model version
and recounts pages_done, so a document re-driven while it is in fact still running gets no
duplicate page and an exact count, only repeated work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from kb.catalog import repo
from kb.catalog.models import utcnow
from kb.context import Context
from kb.queue import TaskQueue

log = logging.getLogger(__name__)


@dataclass
class Redriven:
    documents: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)


def redrive_stalled(ctx: Context, queue: TaskQueue) -> Redriven:
    """Send again every unfinished document and job whose progress stalled; returns their ids.

    Each is claimed first (its progress_at moved to now, in one conditional UPDATE), so sweeps
    running at once in several workers send it once, and the next sweep waits a whole stall
    period again. A broker that fails mid-way (QueueUnavailable) leaves the rest claimed but
    unsent: they are tried again one stall period later.
    """
    stalled_before = utcnow() - timedelta(seconds=ctx.settings.stalled_after_s)
    with ctx.session() as s:
        documents = repo.claim_stalled_documents(s, stalled_before)
    for document_id in documents:
        log.warning("document %s: progress stalled; processing it again", document_id)
        queue.enqueue_render(document_id)
    with ctx.session() as s:
        jobs = repo.claim_stalled_jobs(s, stalled_before)
    for job_id in jobs:
        log.warning("job %s: progress stalled; running it again", job_id)
        queue.enqueue_reindex(job_id)
    return Redriven(documents=documents, jobs=jobs)
