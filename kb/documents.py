"""The upload use case: a file in, a document queued for processing (or the one it already is).

An upload is never stranded: the original and the row are stored, then the render is queued; if
the broker cannot take it, both are removed again and QueueUnavailable reaches the caller (the
API answers 503), so no document waits for a task no one will ever run. Uploading the same bytes
again restarts the document when it failed or its progress stalled.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.exc import IntegrityError

import ingest
from kb import metrics, objects
from kb.catalog import repo
from kb.catalog.models import DocumentStatus, new_id, utcnow
from kb.context import Context
from kb.pipeline import original_key
from kb.queue import QueueUnavailable, TaskQueue

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20


class UploadTooLarge(Exception):
    """The file is larger than KB_MAX_UPLOAD_MB."""


@dataclass(frozen=True)
class StagedUpload:
    """An upload received into a local file, checked, hashed, not yet stored."""

    path: Path
    filename: str  # safe for display (ingest.safe_filename)
    size: int
    sha256: str


@dataclass(frozen=True)
class Accepted:
    id: str
    status: str
    duplicate: bool  # the same bytes were uploaded to this collection before
    queued: bool  # this upload queued work (new, or a failed or stalled document restarted)


def stage(source: BinaryIO, name: str, dest: Path, max_bytes: int) -> StagedUpload:
    """Copy an upload into `dest`, hashing it; check its name, size and type.

    Raises UploadTooLarge past `max_bytes` (as soon as it is passed), ingest.UnsupportedFormat
    for a type that is not accepted, ingest.IngestError for any other bad upload (an empty file,
    a name that is no name).
    """
    filename = ingest.safe_filename(name)
    digest, size = hashlib.sha256(), 0
    with dest.open("wb") as out:
        while chunk := source.read(COPY_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(f"file is larger than the {max_bytes >> 20} MB limit")
            digest.update(chunk)
            out.write(chunk)
    with dest.open("rb") as f:
        ingest.check_upload(filename, f.read(4096))
    return StagedUpload(path=dest, filename=filename, size=size, sha256=digest.hexdigest())


def upload(ctx: Context, queue: TaskQueue, staged: StagedUpload, collection: str) -> Accepted:
    """Store and queue a staged upload; see the module docstring. Raises QueueUnavailable with
    nothing left behind when the broker cannot take the task."""
    accepted = _upload(ctx, queue, staged, collection)
    result = "new" if not accepted.duplicate else "restarted" if accepted.queued else "duplicate"
    metrics.UPLOADS.labels(result=result).inc()
    return accepted


def _upload(ctx: Context, queue: TaskQueue, staged: StagedUpload, collection: str) -> Accepted:
    stalled_before = utcnow() - timedelta(seconds=ctx.settings.stalled_after_s)
    with ctx.session() as s:
        existing = repo.find_document_by_sha256(s, collection, staged.sha256)
        if existing is not None:  # the common case, without storing the bytes again
            doc_id, doc_status = existing.id, existing.status
            stalled = repo.claim_stalled_documents(s, stalled_before, document_id=doc_id)
    if existing is not None:
        if not stalled:
            return Accepted(doc_id, doc_status, duplicate=True, queued=False)
        log.info("upload of %s again: its progress stalled; queued again", doc_id)
        queue.enqueue_render(doc_id)  # QueueUnavailable: 503, and the sweep tries again later
        return Accepted(doc_id, doc_status, duplicate=True, queued=True)

    restarted = _restart_failed(ctx, queue, collection, staged.sha256)
    if restarted is not None:
        return restarted

    doc_id = new_id()
    key = original_key(doc_id, staged.filename)
    content_type = mimetypes.guess_type(staged.filename)[0] or "application/octet-stream"
    ctx.store.put_file(key, staged.path, content_type)
    try:
        with ctx.session() as s:
            doc, created = repo.add_document(
                s,
                collection=collection,
                filename=staged.filename,
                content_type=content_type,
                size_bytes=staged.size,
                sha256=staged.sha256,
                original_key=key,
                document_id=doc_id,
            )
            accepted = Accepted(doc.id, doc.status, duplicate=not created, queued=created)
    except Exception:
        ctx.store.delete(key)  # no orphaned original
        raise
    if not created:  # a concurrent upload of the same bytes won the race
        ctx.store.delete(key)
        return accepted
    try:
        queue.enqueue_render(doc_id)
    except QueueUnavailable:
        objects.delete_document(ctx, doc_id)  # the row and the original: nothing stranded
        raise
    log.info("queued %s (%s, %d bytes)", doc_id, staged.filename, staged.size)
    return accepted


def _restart_failed(
    ctx: Context, queue: TaskQueue, collection: str, sha256: str
) -> Accepted | None:
    """Queue a failed document with these bytes again; None if there is none to restart."""
    try:
        with ctx.session() as s:
            restarted = repo.restart_failed_document(s, collection, sha256)
    except IntegrityError:  # a live document with these bytes was added meanwhile
        return None
    if restarted is None:
        return None
    doc_id, previous_error = restarted
    try:
        queue.enqueue_render(doc_id)
    except QueueUnavailable:
        with ctx.session() as s:  # as it was: failed, with its error
            repo.set_status(s, doc_id, DocumentStatus.FAILED, error=previous_error)
        raise
    log.info("upload of failed document %s again: queued again", doc_id)
    return Accepted(doc_id, DocumentStatus.QUEUED.value, duplicate=True, queued=True)
