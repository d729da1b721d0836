"""The ingest pipeline and re-indexing, as plain functions the Celery tasks call.

Every function takes ids, looks its rows up again, and is idempotent: a document that is gone is
logged and skipped; pages already encoded under the current model version are not encoded again;
an identical page (same content hash) anywhere in the store is encoded once per version and tier.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image

import ingest
from ingest.tiers import TEXT
from kb import objects
from kb.catalog import repo
from kb.catalog.models import DocumentStatus, Job, JobStatus, Page
from kb.context import Context
from kb.keys import page_image_key as page_image_key  # re-exported (lab.bench)
from kb.model.base import PageTensors
from kb.scratch import scratch_dir

log = logging.getLogger(__name__)

ENCODE_BATCH = 8  # pages per encoder call: enough to amortise overhead, small enough for RAM


def original_key(document_id: str, filename: str) -> str:
    """Where an upload's bytes are kept: named by its id and extension, never by the name the
    client sent (a name can be 255 bytes, or start with a prefix the store reserves)."""
    ext = Path(filename).suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,16}", ext):
        ext = ""
    return f"originals/{document_id}/original{ext}"


@dataclass
class RenderResult:
    chunks: list[list[int]]  # page numbers per chunk, each chunk one encode task
    failed: bool = False
    # The first page not rendered when this task's budget (KB_RENDER_BUDGET_S) ran out: the
    # caller hands the rest to a new render task, which resumes there. None: nothing left.
    next_page: int | None = None


def stored_through(numbers: Iterable[int]) -> int:
    """The last page of the run of stored pages from page 1 (0 if page 1 is not stored): where a
    render resumes. ``numbers`` in increasing order."""
    last = 0
    for number in numbers:
        if number != last + 1:
            break
        last = number
    return last


def render_document(
    ctx: Context,
    document_id: str,
    on_chunk: Callable[[list[int]], None] | None = None,
    sent_through: int = 0,
    on_unsent: Callable[[list[int]], None] | None = None,
) -> RenderResult:
    """Render a document page by page, in chunks, storing page images and page rows, for at
    most KB_RENDER_BUDGET_S (checked between chunks, so at least one chunk is rendered).

    ``on_chunk`` is called with each chunk's page numbers as soon as it is stored, so encoding
    starts while later pages are still rendering. When the budget runs out with pages left,
    the result's ``next_page`` says where the next render task resumes.

    Resumable: rendering starts after the run of pages already stored from page 1 (the
    catalog's page rows), so a continuation, a redelivered or a re-driven render renders and
    stores no page twice. The encodes of the stored pages up to ``sent_through`` were sent by
    the task that handed this one the document; those of stored pages after it (or of all, for
    a render sent by the upload or the sweep: their encodes may be lost) that are not encoded
    yet are sent again through ``on_unsent`` (default ``on_chunk``): encoding is idempotent.
    """
    started = time.monotonic()
    with ctx.session() as s:
        doc = repo.get_document(s, document_id)
        if doc is None:
            log.info("render: document %s is gone; nothing to do", document_id)
            return RenderResult(chunks=[])
        if doc.status in (DocumentStatus.READY, DocumentStatus.FAILED):
            # A second delivery (the sweep re-drove it, Redis restored a message) after the
            # first one finished: a failed document is only restarted by uploading it again.
            log.info("render: document %s is already %s; nothing to do", document_id, doc.status)
            return RenderResult(chunks=[])
        filename, key = doc.filename, doc.original_key
        repo.set_status(s, document_id, DocumentStatus.PROCESSING)
        stored = repo.stored_pages(s, document_id)

    size = ctx.settings.render_chunk_pages
    done = stored_through(number for number, _ in stored)
    chunks: list[list[int]] = []
    unsent = [n for n, encoded in stored if sent_through < n <= done and not encoded]
    send_again = on_unsent or on_chunk
    for i in range(0, len(unsent), size):
        chunks.append(unsent[i : i + size])
        if send_again is not None:
            send_again(chunks[-1])
    if done:
        log.info("render: document %s resumes after page %d", document_id, done)

    ext = Path(filename).suffix.lower()
    with scratch_dir(ctx.settings.scratch_dir) as tmp:
        path = Path(tmp) / f"original{ext}"
        ctx.store.get_file(key, path)
        try:
            # Opened once: a text document or an EPUB is laid out here, once, for the count
            # and every page; over max_pages_per_document it fails before any page renders.
            with ingest.open_document(path, ext, ctx.settings.max_pages_per_document) as opened:
                total = opened.page_count
                with ctx.session() as s:
                    if not repo.set_pages_total(s, document_id, total):
                        return RenderResult(chunks=chunks)
                # Pages without a text layer are read by OCR here (ctx.ocr, loaded once).
                pages = ingest.page_chunks(opened, chunk_size=size, start=done + 1, ocr=ctx.ocr)
                for chunk in pages:
                    if not objects.store_pages(ctx, document_id, chunk):
                        log.info("render: document %s deleted mid-way; stopping", document_id)
                        return RenderResult(chunks=chunks)
                    numbers = [p.number for p in chunk]
                    chunks.append(numbers)
                    if on_chunk is not None:
                        on_chunk(numbers)
                    last = numbers[-1]
                    spent = time.monotonic() - started
                    if last < total and spent >= ctx.settings.render_budget_s:
                        log.info(
                            "render: document %s: pages %d-%d took %.1f s; pages %d-%d are "
                            "handed to a new task",
                            document_id, done + 1, last, spent, last + 1, total,
                        )  # fmt: skip
                        return RenderResult(chunks=chunks, next_page=last + 1)
        except ingest.IngestError as exc:
            fail_document(ctx, document_id, str(exc))
            return RenderResult(chunks=chunks, failed=True)
    _ready_if_encoded(ctx, document_id)
    return RenderResult(chunks=chunks)


def _ready_if_encoded(ctx: Context, document_id: str) -> None:
    """Every page is stored: if every one is encoded too, the document is ready now. Only a
    render that had nothing left to render or send finds it so (encode marks it ready
    otherwise), one that started while the last encode moved it to ready, say."""
    with ctx.session() as s:
        counts = repo.record_pages_done(s, document_id)
        if counts is not None and counts[1] is not None and counts[0] >= counts[1]:
            repo.set_status(s, document_id, DocumentStatus.READY)


def fail_document(ctx: Context, document_id: str, error: str) -> None:
    log.warning("document %s failed: %s", document_id, error)
    with ctx.session() as s:
        repo.set_status(s, document_id, DocumentStatus.FAILED, error=error)


class Stages:
    """Seconds per stage of a task, summed (``with stages("base"): ...``), for its log line."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def __str__(self) -> str:
        return " ".join(f"{name}={s:.3f}" for name, s in self.seconds.items())


def _encode_missing(
    ctx: Context, pages: Iterable[Page], force: bool = False, stages: Stages | None = None
) -> None:
    """Write tensors for every tier of these pages under the current model version.

    The writes (safetensors bytes to the store: a file and its fsync, or an S3 PUT) wait on
    I/O, so a thread does them while the model encodes the next batch; every write has
    succeeded when this returns, and the first that failed is raised, so a caller marks pages
    encoded only once their tensors are stored.
    """
    stage = stages or Stages()
    backend = ctx.backend
    version = backend.version
    by_hash = {p.content_hash: p for p in pages}  # identical pages: encode once
    images: dict[str, Image.Image] = {}

    def image(p: Page) -> Image.Image:
        if p.content_hash not in images:
            with stage("load"), Image.open(BytesIO(ctx.store.get(p.image_key))) as im:
                images[p.content_hash] = im.convert(backend.image_mode)
        return images[p.content_hash]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-tensor-put") as writer:
        writes: list[Future[None]] = []

        def put(tier: str, content_hash: str, tensors: PageTensors) -> None:
            writes.append(writer.submit(ctx.tensors.put, version, tier, content_hash, tensors))

        # The text tier first: the exact memory of the newest and pinned pages (kb.packer).
        with stage("exists"):
            todo = [
                p
                for h, p in by_hash.items()
                if p.text.strip() and (force or not ctx.tensors.exists(version, TEXT, h))
            ]
        for i in range(0, len(todo), ENCODE_BATCH):
            batch = todo[i : i + ENCODE_BATCH]
            with stage(TEXT), ctx.model_lock:
                outs = backend.encode_text([p.text for p in batch])
            for p, tensors in zip(batch, outs, strict=True):
                if tensors:  # a backend that reads the text at question time caches nothing
                    put(TEXT, p.content_hash, tensors)
        for tier in backend.tier_tokens:
            with stage("exists"):
                todo = [
                    p
                    for h, p in by_hash.items()
                    if force or not ctx.tensors.exists(version, tier, h)
                ]
            for i in range(0, len(todo), ENCODE_BATCH):
                batch = todo[i : i + ENCODE_BATCH]
                sources = [image(p) for p in batch]
                with stage("resize"):
                    tier_images = [ingest.tier_image(im, tier) for im in sources]
                with stage(tier), ctx.model_lock:
                    outs = backend.encode(tier_images, tier)
                for p, tensors in zip(batch, outs, strict=True):
                    put(tier, p.content_hash, tensors)
        with stage("put_wait"):  # what the writes still took once the model was done
            for write in writes:
                write.result()


def encode_pages(ctx: Context, document_id: str, numbers: list[int]) -> tuple[int, int | None]:
    """Encode the given pages of a document; mark the document ready when its last page is done.

    Returns (pages done, pages total) of the document; (0, None) if it is gone.
    """
    version = ctx.backend.version
    with ctx.session() as s:
        doc = repo.get_document(s, document_id)
        if doc is None:
            log.info("encode: document %s is gone; nothing to do", document_id)
            return 0, None
        pages = [p for p in doc.pages if p.number in set(numbers)]
        todo = [p for p in pages if p.encoded_version != version]
        s.expunge_all()
    stages = Stages()
    if todo:
        _encode_missing(ctx, todo, stages=stages)
    with stages("catalog"), ctx.session() as s:
        repo.mark_pages_encoded(s, [p.id for p in todo], version)
        counts = repo.record_pages_done(s, document_id)
        if counts is not None and counts[1] is not None and counts[0] >= counts[1]:
            repo.set_status(s, document_id, DocumentStatus.READY)
    # Where a chunk's time goes (summed by lab.bench_ingest): seconds per stage.
    log.info("encode stages: pages=%d %s", len(todo), stages)
    if counts is None:  # deleted while encoding: the tensors just written are garbage
        objects.collect(ctx, (p.content_hash for p in todo))
        return 0, None
    return counts


# -- re-indexing
#
# A job re-encodes its pages for its target version (jobs.model_version), which only a worker
# running that version can do: any other refuses the job, failing it with a message. Its pages
# are listed once (job_pages); batches mark theirs done and recount, so a batch run twice counts
# once and a job sent again (the sweep) resumes with the pages not done. New tensors are written
# beside the old ones, so questions keep reading the previous ones; the pages switch to the
# target version together, and the job is done, only when every page is re-encoded.


def _refused(ctx: Context, job: Job) -> bool:
    """True, with the job failed saying why, when this worker runs another model version."""
    running = ctx.backend.version
    if job.model_version == running:
        return False
    error = (
        f"a worker running model version {running} took this job, which re-encodes for "
        f"{job.model_version}: start the workers with the weights of {job.model_version} "
        "(KB_MODEL_PATH) and reindex again"
    )
    log.warning("job %s refused: %s", job.id, error)
    with ctx.session() as s:
        repo.set_job_status(s, job.id, JobStatus.FAILED, error=error)
    return True


def _unfinished_job(ctx: Context, job_id: str) -> Job | None:
    with ctx.session() as s:
        job = repo.get_job(s, job_id)
        if job is not None:
            job.collection  # noqa: B018 - loaded now, read after the session
            s.expunge_all()
    if job is None or job.status not in repo.UNFINISHED_JOB:
        log.info("job %s is %s; nothing to do", job_id, "gone" if job is None else job.status)
        return None
    return None if _refused(ctx, job) else job


def reindex_plan(ctx: Context, job_id: str, batch_size: int) -> list[list[int]]:
    """The page ids a reindex job still has to re-encode, in batches; lists the job's pages on
    its first run and recounts its progress. A job with nothing left switches now."""
    job = _unfinished_job(ctx, job_id)
    if job is None:
        return []
    collection = job.collection.name if job.collection is not None else None
    with ctx.session() as s:
        repo.plan_job_pages(s, job_id, collection)
        ids = [p.id for p in repo.job_pages(s, job_id, done=False)]
        repo.recount_job(s, job_id)
        repo.set_job_status(s, job_id, JobStatus.RUNNING)
    if not ids:
        finish_reindex(ctx, job_id)
    return [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]


def reindex_pages(ctx: Context, job_id: str, page_ids: list[int]) -> tuple[int, int] | None:
    """Re-encode a batch of a reindex job for its version; the last batch switches the job.

    Returns the job's (done, total), None if it is gone, finished or refused.
    """
    job = _unfinished_job(ctx, job_id)
    if job is None:
        return None
    with ctx.session() as s:
        pages = repo.job_pages(s, job_id, done=False, among=page_ids)  # a redelivery: fewer
        s.expunge_all()
    _encode_missing(ctx, pages, force=True)
    hashes = [p.content_hash for p in pages]
    # Pages whose document was deleted while they were re-encoded: collect their new tensors.
    objects.collect(ctx, hashes)
    with ctx.session() as s:
        progress = repo.finish_job_pages(s, job_id, [p.id for p in pages])
    if progress is None:  # cancelled (or failed) meanwhile: what this batch wrote is garbage
        objects.collect_version(ctx, job.model_version, hashes)
        return None
    if progress[0] >= progress[1]:
        finish_reindex(ctx, job_id)
    return progress


def finish_reindex(ctx: Context, job_id: str) -> None:
    """Switch every page of the job to its version and make that the serving one, in one
    transaction with the job's move to done (which one caller wins), then collect the
    superseded versions' tensors that no page serves any more."""
    with ctx.session() as s:
        job = repo.get_job(s, job_id)
        if job is None or not repo.set_job_status(s, job_id, JobStatus.DONE):
            return  # gone, or finished by another batch, cancelled or failed meanwhile
        version, switched = job.model_version, repo.job_pages(s, job_id)
        superseded: dict[str, set[str]] = {}  # old version -> contents that left it
        for p in switched:
            if p.encoded_version is not None and p.encoded_version != version:
                superseded.setdefault(p.encoded_version, set()).add(p.content_hash)
        repo.mark_pages_encoded(s, [p.id for p in switched], version)
        repo.set_serving_version(s, version)
    log.info("job %s done: %d pages serve model version %s", job_id, len(switched), version)
    for old_version, hashes in superseded.items():
        objects.collect_version(ctx, old_version, hashes)
