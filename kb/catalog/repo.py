"""Catalog queries the API and the workers call: one small function per question or change.

Conventions: every function takes the caller's Session and never commits (the caller owns the
transaction); lookups return None when the row is missing; changes to a row that may be gone
return False or None instead of raising, because tasks are retried and documents get deleted
while they are being processed. Writes that several processes race on are single SQL
statements (ON CONFLICT, `x = x + n`), never read-modify-write in Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Result,
    Select,
    case,
    delete,
    false,
    func,
    literal,
    null,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased, contains_eager, joinedload, selectinload

from kb.catalog.models import (
    LIVE_DOCUMENT,
    ApiKey,
    ApiKeyCollection,
    Collection,
    Document,
    DocumentStatus,
    Job,
    JobKind,
    JobPage,
    JobStatus,
    Page,
    Serving,
    TextSource,
    new_id,
    utcnow,
)

COLLECTION_NAME_MAX = 100  # the column's length
# Any characters but control characters (NUL, newlines, escapes, C1): a name is shown in lists,
# logs and terminals, and PostgreSQL refuses NUL in text outright.
COLLECTION_NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
PAGE_NUMBER_MAX = 2**31 - 1  # pages.number is a 32-bit INTEGER


def check_collection_name(name: str) -> str:
    """`name` if it can name a collection; ValueError saying why not otherwise."""
    if not name or len(name) > COLLECTION_NAME_MAX:
        raise ValueError(f"collection name must be 1 to {COLLECTION_NAME_MAX} characters")
    if not re.fullmatch(COLLECTION_NAME_PATTERN, name):
        raise ValueError("collection name must not contain control characters")
    return name


# The first key of the two-key advisory locks on page contents (the one-key space, which the
# migration lock uses, does not overlap it): "kb".
CONTENT_LOCK_NAMESPACE = 0x6B62
JOBS_LOCK_NAMESPACE = 0x6A62  # "jb": starting a job (start_job)

# -- collections


def get_collection(session: Session, name: str) -> Collection | None:
    return session.scalars(select(Collection).where(Collection.name == name)).one_or_none()


def get_or_create_collection(session: Session, name: str) -> Collection:
    """The collection called `name`, created if missing; safe when callers race on one name.

    INSERT .. ON CONFLICT DO NOTHING then SELECT: a concurrent creator's row wins and both
    callers get it, with no unique-violation error to recover from (which would need a
    SAVEPOINT, unreliable on SQLite).
    """
    check_collection_name(name)
    existing = get_collection(session, name)
    if existing is not None:
        return existing
    stmt = _insert(session, Collection).values(name=name, created_at=utcnow())
    session.execute(stmt.on_conflict_do_nothing(index_elements=[Collection.name]))
    return session.scalars(select(Collection).where(Collection.name == name)).one()


def collection_counts(
    session: Session, within: Iterable[str] | None = None
) -> list[tuple[str, int, int]]:
    """(name, documents, pages) of every collection, or of those `within` names that exist, by
    name; pages are the page rows rendered so far, of documents in any state."""
    documents = (
        select(func.count())
        .select_from(Document)
        .where(Document.collection_id == Collection.id)
        .scalar_subquery()
    )
    pages = (
        select(func.count())
        .select_from(Page)
        .join(Page.document)
        .where(Document.collection_id == Collection.id)
        .scalar_subquery()
    )
    stmt = select(Collection.name, documents, pages).order_by(Collection.name)
    if within is not None:
        stmt = stmt.where(Collection.name.in_(list(within)))
    return [(name, docs, n) for name, docs, n in session.execute(stmt)]


def document_ids_in(session: Session, collection: str) -> list[str]:
    """The ids of every document of the collection, in any state."""
    stmt = select(Document.id).join(Document.collection).where(Collection.name == collection)
    return list(session.scalars(stmt.order_by(Document.created_at, Document.id)))


def delete_empty_collection(session: Session, name: str) -> bool:
    """Delete the collection and its jobs if it has no document; False if it is not there or
    still has documents (the caller deletes those first, with their objects: kb.collections).

    May raise IntegrityError on PostgreSQL when a document is added to it at the same moment.
    """
    coll = session.execute(
        select(Collection.id).where(
            Collection.name == name,
            ~select(Document.id).where(Document.collection_id == Collection.id).exists(),
        )
    ).scalar_one_or_none()
    if coll is None:
        return False
    session.execute(delete(Job).where(Job.collection_id == coll))
    stmt = delete(Collection).where(
        Collection.id == coll,
        ~select(Document.id).where(Document.collection_id == coll).exists(),
    )
    return _rowcount(session.execute(stmt)) > 0


# -- documents


def create_document(
    session: Session,
    *,
    collection: str,
    filename: str,
    content_type: str,
    size_bytes: int,
    sha256: str,
    original_key: str,
    document_id: str | None = None,
) -> Document:
    """A new document, status queued. Pass `document_id` when the id is already part of
    `original_key` (the original is stored before the row is committed)."""
    doc = Document(
        id=document_id or new_id(),
        collection=get_or_create_collection(session, collection),
        filename=filename,
        content_type=content_type,
        size_bytes=size_bytes,
        sha256=sha256,
        original_key=original_key,
        status=DocumentStatus.QUEUED.value,
    )
    session.add(doc)
    session.flush()  # ids and defaults assigned now, errors raised here rather than at commit
    return doc


def add_document(
    session: Session,
    *,
    collection: str,
    filename: str,
    content_type: str,
    size_bytes: int,
    sha256: str,
    original_key: str,
    document_id: str | None = None,
) -> tuple[Document, bool]:
    """A new queued document, or the collection's live document with the same content.

    Returns (document, created). Uploads of the same bytes race on the unique index of live
    documents per (collection, sha256): one INSERT .. ON CONFLICT DO NOTHING wins, the others
    insert nothing and get the winner's row (PostgreSQL makes a conflicting insert wait for the
    other transaction's commit; SQLite serialises writers), so there is no IntegrityError to
    recover from and no SAVEPOINT is needed.
    """
    coll = get_or_create_collection(session, collection)
    doc_id = document_id or new_id()
    stmt = (
        _insert(session, Document)
        .values(
            id=doc_id,
            collection_id=coll.id,
            filename=filename,
            content_type=content_type,
            size_bytes=size_bytes,
            sha256=sha256,
            original_key=original_key,
            status=DocumentStatus.QUEUED.value,
            progress_at=utcnow(),
        )
        .on_conflict_do_nothing(
            index_elements=[Document.collection_id, Document.sha256],
            index_where=text(LIVE_DOCUMENT),
        )
        .returning(Document.id)
    )
    for _ in range(3):  # the winner may fail in between; then this insert can win instead
        if session.execute(stmt).first() is not None:
            doc = get_document(session, doc_id)
            assert doc is not None  # inserted by this very transaction
            return doc, True
        existing = find_document_by_sha256(session, collection, sha256)
        if existing is not None:
            return existing, False
    raise RuntimeError(f"document {sha256} in {collection!r}: insert and lookup kept missing")


def get_document(session: Session, document_id: str) -> Document | None:
    # The collection comes along: every response names it.
    return session.get(Document, document_id, options=[joinedload(Document.collection)])


def find_document_by_sha256(session: Session, collection: str, sha256: str) -> Document | None:
    """An earlier upload of the same bytes into `collection` that has not failed, if any."""
    stmt = (
        select(Document)
        .join(Document.collection)
        .where(
            Collection.name == collection,
            Document.sha256 == sha256,
            Document.status != DocumentStatus.FAILED.value,
        )
        .options(contains_eager(Document.collection))
        .order_by(Document.created_at, Document.id)
        .limit(1)
    )
    return session.scalars(stmt).first()


def list_documents(
    session: Session, collection: str | None = None, within: Iterable[str] | None = None
) -> list[Document]:
    """Documents, oldest first; of one collection, or of all when `collection` is None; only
    those of the collections `within` names, when it is given."""
    stmt = (
        select(Document)
        .join(Document.collection)
        .options(contains_eager(Document.collection))
        .order_by(Document.created_at, Document.id)
    )
    if collection is not None:
        stmt = stmt.where(Collection.name == collection)
    if within is not None:
        stmt = stmt.where(Collection.name.in_(list(within)))
    return list(session.scalars(stmt))


def set_status(session: Session, document_id: str, status: str, error: str | None = None) -> bool:
    """Set a document's status and error (None clears it); False if the document is gone."""
    stmt = (
        update(Document)
        .where(Document.id == document_id)
        .values(status=DocumentStatus(status).value, error=error, progress_at=utcnow())
    )
    return _rowcount(session.execute(stmt)) > 0


def set_pinned(session: Session, document_id: str, pinned: bool) -> bool:
    """Pin or unpin a document; False if it is gone."""
    stmt = update(Document).where(Document.id == document_id).values(pinned=pinned)
    return _rowcount(session.execute(stmt)) > 0


def set_pages_total(session: Session, document_id: str, total: int) -> bool:
    if total < 0:
        raise ValueError(f"pages_total must be >= 0, got {total}")
    stmt = (
        update(Document)
        .where(Document.id == document_id)
        .values(pages_total=total, progress_at=utcnow())
    )
    return _rowcount(session.execute(stmt)) > 0


def record_progress(session: Session, document_id: str) -> bool:
    """Note that work on the document moved now (a chunk stored); False if it is gone."""
    stmt = update(Document).where(Document.id == document_id).values(progress_at=utcnow())
    return _rowcount(session.execute(stmt)) > 0


# Work on these is unfinished: the sweep re-drives them when their progress stalls.
UNFINISHED_DOCUMENT = (DocumentStatus.QUEUED.value, DocumentStatus.PROCESSING.value)
UNFINISHED_JOB = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def claim_stalled_documents(
    session: Session, stalled_before: datetime, document_id: str | None = None
) -> list[str]:
    """The unfinished documents (or the one given) whose progress has not moved since
    `stalled_before`, with their progress_at set to now; a document is claimed by one caller
    only (one conditional UPDATE), so two sweeps never re-drive it twice."""
    stmt = update(Document).where(
        Document.status.in_(UNFINISHED_DOCUMENT), Document.progress_at < stalled_before
    )
    if document_id is not None:
        stmt = stmt.where(Document.id == document_id)
    stmt = stmt.values(progress_at=utcnow()).returning(Document.id)
    return list(session.scalars(stmt, execution_options={"synchronize_session": False}))


def restart_failed_document(
    session: Session, collection: str, sha256: str
) -> tuple[str, str | None] | None:
    """Queue the newest failed document with these bytes in `collection` again (error cleared);
    its id and the error it had, or None if there is none or a live document with these bytes
    exists.

    May raise IntegrityError when a live document with these bytes is added at the same moment
    (the unique index of live documents); the caller then adds or finds that one instead.
    """
    found = session.execute(
        select(Document.id, Document.error)
        .join(Document.collection)
        .where(
            Collection.name == collection,
            Document.sha256 == sha256,
            Document.status == DocumentStatus.FAILED.value,
        )
        .order_by(Document.created_at.desc(), Document.id.desc())
        .limit(1)
    ).first()
    if found is None:
        return None
    failed, error = found
    live = aliased(Document)
    stmt = (
        update(Document)
        .where(
            Document.id == failed,
            Document.status == DocumentStatus.FAILED.value,
            ~select(live.id)
            .where(
                live.collection_id == Document.collection_id,
                live.sha256 == Document.sha256,
                live.status != DocumentStatus.FAILED.value,
            )
            .exists(),
        )
        .values(status=DocumentStatus.QUEUED.value, error=None, progress_at=utcnow())
    )
    restarted = _rowcount(session.execute(stmt, execution_options={"synchronize_session": False}))
    return (failed, error) if restarted else None


def record_pages_done(session: Session, document_id: str) -> tuple[int, int | None] | None:
    """Recount the document's encoded pages into pages_done; returns (done, total).

    None if the document is gone. Workers encoding chunks of one document call this at once;
    the row lock taken first makes each recount see every chunk committed before it, so the
    last one to commit writes the full count (a recount, not `+ n`, so a retried chunk cannot
    count twice).
    """
    # FOR NO KEY UPDATE (key_share): it still serialises recounts, but does not conflict with
    # the KEY SHARE lock that inserting pages takes on the document through the foreign key,
    # which FOR UPDATE would, deadlocking two workers that each inserted pages first.
    locked = session.execute(
        select(Document.id).where(Document.id == document_id).with_for_update(key_share=True)
    ).first()
    if locked is None:
        return None
    encoded = (
        select(func.count())
        .select_from(Page)
        .where(Page.document_id == document_id, Page.encoded_version.is_not(None))
        .scalar_subquery()
    )
    stmt = (
        update(Document)
        .where(Document.id == document_id)
        .values(pages_done=encoded, progress_at=utcnow())
        .returning(Document.pages_done, Document.pages_total)
    )
    row = session.execute(stmt, execution_options={"synchronize_session": "fetch"}).one()
    return row.pages_done, row.pages_total


def delete_document(session: Session, document_id: str) -> bool:
    """Delete the row; its pages go with it (ON DELETE CASCADE). False if it was not there.

    Objects in the store (original, page images, tensors) are the caller's to remove.
    """
    stmt = delete(Document).where(Document.id == document_id)
    return _rowcount(session.execute(stmt)) > 0


# -- pages


def upsert_page(
    session: Session,
    *,
    document_id: str,
    number: int,
    content_hash: str,
    text: str,
    image_key: str,
    text_source: str = TextSource.TEXT_LAYER,
) -> Page:
    """Create or overwrite page `number` of a document; idempotent, so a rerun render is safe.

    The page keeps its encoded_version only if its content hash is unchanged: tensors are
    stored by content hash, so a changed page has none until it is encoded again.
    """
    if number < 1:
        raise ValueError(f"page numbers start at 1, got {number}")
    stmt = _insert(session, Page).values(
        document_id=document_id,
        number=number,
        content_hash=content_hash,
        text=text,
        text_source=TextSource(text_source).value,
        image_key=image_key,
        created_at=utcnow(),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[Page.document_id, Page.number],
        set_={
            "content_hash": stmt.excluded.content_hash,
            "text": stmt.excluded.text,
            "text_source": stmt.excluded.text_source,
            "image_key": stmt.excluded.image_key,
            "encoded_version": case(
                (Page.content_hash == stmt.excluded.content_hash, Page.encoded_version),
                else_=null(),
            ),
        },
    )
    # populate_existing: a Page already in this session is refreshed with the stored values.
    return session.scalars(
        stmt.returning(Page), execution_options={"populate_existing": True}
    ).one()


def get_page(session: Session, document_id: str, number: int) -> Page | None:
    stmt = select(Page).where(Page.document_id == document_id, Page.number == number)
    return session.scalars(stmt).one_or_none()


def stored_pages(session: Session, document_id: str) -> list[tuple[int, bool]]:
    """(number, encoded under some version) of each page row the document has, by number:
    where a render resumes, and which stored pages still wait for their encode."""
    stmt = (
        select(Page.number, Page.encoded_version.is_not(None))
        .where(Page.document_id == document_id)
        .order_by(Page.number)
    )
    return [(number, bool(encoded)) for number, encoded in session.execute(stmt)]


def mark_pages_encoded(session: Session, page_ids: Iterable[int], model_version: str) -> int:
    """Record that the tensors of these pages for `model_version` are complete and serving;
    returns how many pages were updated."""
    ids = list(page_ids)
    if not ids:
        return 0
    stmt = update(Page).where(Page.id.in_(ids)).values(encoded_version=model_version)
    return _rowcount(session.execute(stmt))


def page_hashes(session: Session, document_id: str) -> set[str]:
    """The content hashes of a document's pages: the keys of its page images and tensors."""
    stmt = select(Page.content_hash).where(Page.document_id == document_id)
    return set(session.scalars(stmt))


# -- references to stored objects (kb.objects)


def lock_content(session: Session, content_hashes: Iterable[str]) -> None:
    """Hold the catalog's lock on these page contents until the transaction ends.

    Whoever adds a page row and makes sure its objects exist, and whoever deletes objects that
    no row references, hold it around that check-then-act, so the two never interleave.
    PostgreSQL: a transaction-scoped advisory lock per content, taken in one order so two
    lockers cannot deadlock. SQLite: the database's write lock, taken by a write that changes
    nothing; call this first in the transaction, before any write.
    """
    hashes = sorted(set(content_hashes))
    if not hashes:
        return
    if session.get_bind().dialect.name == "sqlite":
        nothing = update(Page).where(false()).values(id=Page.id)
        session.execute(nothing, execution_options={"synchronize_session": False})
        return
    # A 32-bit key per content: two contents that share one only wait for each other.
    keys = sorted({int(h[:8], 16) - 2**31 for h in hashes})
    for key in keys:
        session.execute(select(func.pg_advisory_xact_lock(CONTENT_LOCK_NAMESPACE, key)))


def content_in_use(session: Session, content_hashes: Iterable[str]) -> set[str]:
    """Those of these contents that some page row (of any document, in any state) has."""
    hashes = list(set(content_hashes))
    stmt = select(Page.content_hash).where(Page.content_hash.in_(hashes)).distinct()
    return set(session.scalars(stmt)) if hashes else set()


def content_in_use_at(
    session: Session, content_hashes: Iterable[str], model_version: str
) -> set[str]:
    """Those of these contents that some page row serves from `model_version`'s tensors."""
    hashes = list(set(content_hashes))
    stmt = (
        select(Page.content_hash)
        .where(Page.content_hash.in_(hashes), Page.encoded_version == model_version)
        .distinct()
    )
    return set(session.scalars(stmt)) if hashes else set()


def all_content_hashes(session: Session) -> set[str]:
    """Every content some page row has: what a sweep of the store must keep."""
    return set(session.scalars(select(Page.content_hash).distinct()))


def ready_pages(session: Session, collection: str) -> list[Page]:
    """Every page of the collection's ready documents, each with its document loaded: oldest
    document first, then by page number (the order the packer lays pages out in)."""
    stmt = _pages_with_documents().where(
        Collection.name == collection, Document.status == DocumentStatus.READY.value
    )
    return list(session.scalars(stmt))


def pages_of_collection(session: Session, collection: str | None) -> list[Page]:
    """Every page of every document in the collection (None: in all collections), whatever
    the document's status, in the same order as `ready_pages`; what a reindex re-encodes."""
    stmt = _pages_with_documents()
    if collection is not None:
        stmt = stmt.where(Collection.name == collection)
    return list(session.scalars(stmt))


def _pages_with_documents() -> Select[Page]:
    return (
        select(Page)
        .join(Page.document)
        .join(Document.collection)
        .options(contains_eager(Page.document).contains_eager(Document.collection))
        .order_by(Document.created_at, Document.id, Page.number)
    )


# -- jobs


def create_job(
    session: Session,
    *,
    model_version: str,
    collection: str | None = None,
    total: int = 0,
    kind: str = JobKind.REINDEX,
) -> Job:
    """A new job, status queued; `collection` None means every collection."""
    job = Job(
        id=new_id(),
        kind=JobKind(kind).value,
        collection=None if collection is None else get_or_create_collection(session, collection),
        model_version=model_version,
        status=JobStatus.QUEUED.value,
        done=0,
        total=total,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def delete_job(session: Session, job_id: str) -> bool:
    stmt = delete(Job).where(Job.id == job_id)
    return _rowcount(session.execute(stmt)) > 0


def set_job_total(session: Session, job_id: str, total: int) -> bool:
    """Set how many units the job has (known once the fan-out has listed its pages)."""
    if total < 0:
        raise ValueError(f"job total must be >= 0, got {total}")
    stmt = update(Job).where(Job.id == job_id).values(total=total, progress_at=utcnow())
    return _rowcount(session.execute(stmt)) > 0


def set_job_status(session: Session, job_id: str, status: str, error: str | None = None) -> bool:
    """Move an unfinished (queued or running) job to `status`; False if it is gone or already
    finished: a done, failed or cancelled job keeps its status, so a job is finished once, by
    whichever of its batches, cancel or failure gets there first."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(UNFINISHED_JOB))
        .values(status=JobStatus(status).value, error=error, progress_at=utcnow())
    )
    return _rowcount(session.execute(stmt)) > 0


def find_unfinished_job(
    session: Session, *, model_version: str, collection: str | None, kind: str = JobKind.REINDEX
) -> Job | None:
    """The queued or running job of this kind, collection (None: every collection) and target
    version, if there is one."""
    stmt = select(Job).where(
        Job.kind == JobKind(kind).value,
        Job.model_version == model_version,
        Job.status.in_(UNFINISHED_JOB),
    )
    if collection is None:
        stmt = stmt.where(Job.collection_id.is_(None))
    else:
        stmt = stmt.join(Job.collection).where(Collection.name == collection)
    return session.scalars(stmt.order_by(Job.created_at, Job.id).limit(1)).first()


def start_job(
    session: Session, *, model_version: str, collection: str | None, kind: str = JobKind.REINDEX
) -> tuple[Job, bool]:
    """A new queued job, or the unfinished identical one (same kind, collection and target
    version); returns (job, created). Callers at the same moment queue on the catalog's job
    lock (held to the end of the transaction), so they make one job between them."""
    _lock_jobs(session)
    existing = find_unfinished_job(
        session, model_version=model_version, collection=collection, kind=kind
    )
    if existing is not None:
        return existing, False
    return create_job(session, model_version=model_version, collection=collection, kind=kind), True


def plan_job_pages(session: Session, job_id: str, collection: str | None) -> int:
    """List the pages a reindex job re-encodes, once: every encoded page of the collection's
    documents (None: of all) that have not failed. A job already listed (a re-run: the sweep,
    a redelivery) keeps its list. Returns how many pages were listed now."""
    listed = select(JobPage.job_id).where(JobPage.job_id == job_id).exists()
    pages = (
        select(literal(job_id), Page.id)
        .join(Page.document)
        .where(
            Page.encoded_version.is_not(None),
            Document.status != DocumentStatus.FAILED.value,
            ~listed,
        )
    )
    if collection is not None:
        pages = pages.join(Document.collection).where(Collection.name == collection)
    stmt = (
        _insert(session, JobPage)
        .from_select([JobPage.job_id, JobPage.page_id], pages)
        .on_conflict_do_nothing(index_elements=[JobPage.job_id, JobPage.page_id])
        .returning(JobPage.page_id)
    )
    return len(session.execute(stmt).all())


def job_pages(
    session: Session,
    job_id: str,
    *,
    done: bool | None = None,
    among: Iterable[int] | None = None,
) -> list[Page]:
    """The job's pages (only those done, or not done, when `done` is given; only those of the
    page ids `among`, when given), by page id."""
    stmt = select(Page).join(JobPage, JobPage.page_id == Page.id).where(JobPage.job_id == job_id)
    if done is not None:
        stmt = stmt.where(JobPage.done.is_(done))
    if among is not None:
        stmt = stmt.where(JobPage.page_id.in_(list(among)))
    return list(session.scalars(stmt.order_by(Page.id)))


def finish_job_pages(
    session: Session, job_id: str, page_ids: Iterable[int]
) -> tuple[int, int] | None:
    """Mark these pages of an unfinished job done and recount its progress; returns (done,
    total), None if the job is gone or finished (cancelled, failed: nothing is marked).

    A recount of the job's pages, never `done + n`: a batch run twice counts its pages once.
    The job's row lock serialises the recounts of batches finishing at once, so the last to
    commit sees every batch (as record_pages_done does for documents).
    """
    locked = session.execute(
        select(Job.id)
        .where(Job.id == job_id, Job.status.in_(UNFINISHED_JOB))
        .with_for_update(key_share=True)
    ).first()
    if locked is None:
        return None
    ids = list(page_ids)
    if ids:
        session.execute(
            update(JobPage)
            .where(JobPage.job_id == job_id, JobPage.page_id.in_(ids))
            .values(done=True),
            execution_options={"synchronize_session": False},
        )
    return recount_job(session, job_id)


def recount_job(session: Session, job_id: str) -> tuple[int, int] | None:
    """Count the job's pages (all, done) into total and done; returns (done, total)."""
    of_job = JobPage.job_id == job_id
    done = select(func.count()).select_from(JobPage).where(of_job, JobPage.done.is_(True))
    total = select(func.count()).select_from(JobPage).where(of_job)
    stmt = (
        update(Job)
        .where(Job.id == job_id)
        .values(done=done.scalar_subquery(), total=total.scalar_subquery(), progress_at=utcnow())
        .returning(Job.done, Job.total)
    )
    row = session.execute(stmt, execution_options={"synchronize_session": "fetch"}).first()
    return None if row is None else (row.done, row.total)


def claim_stalled_jobs(session: Session, stalled_before: datetime) -> list[str]:
    """Unfinished jobs whose progress has not moved since `stalled_before`, claimed as
    `claim_stalled_documents` claims documents. A job sent again resumes: its pages already
    done are not re-encoded, and its count stays exact (a recount)."""
    stmt = (
        update(Job)
        .where(Job.status.in_(UNFINISHED_JOB), Job.progress_at < stalled_before)
        .values(progress_at=utcnow())
        .returning(Job.id)
    )
    return list(session.scalars(stmt, execution_options={"synchronize_session": False}))


def _lock_jobs(session: Session) -> None:
    """Hold the catalog's lock on starting jobs until the transaction ends (see lock_content:
    an advisory lock on PostgreSQL, the write lock on SQLite; call it before any write)."""
    if session.get_bind().dialect.name == "sqlite":
        nothing = update(Job).where(false()).values(id=Job.id)
        session.execute(nothing, execution_options={"synchronize_session": False})
        return
    session.execute(select(func.pg_advisory_xact_lock(JOBS_LOCK_NAMESPACE, 0)))


# -- the serving model version


def serving_version(session: Session) -> str | None:
    """The model version the catalog serves; None until a process has recorded one."""
    return session.scalar(select(Serving.model_version).where(Serving.id == 1))


def claim_serving_version(session: Session, model_version: str) -> str:
    """Record `model_version` as the serving one unless the catalog has one already; returns
    the serving version (processes starting at once: the first insert wins)."""
    stmt = _insert(session, Serving).values(id=1, model_version=model_version, since=utcnow())
    session.execute(stmt.on_conflict_do_nothing(index_elements=[Serving.id]))
    version = serving_version(session)
    assert version is not None  # inserted now, or there already
    return version


def set_serving_version(session: Session, model_version: str) -> None:
    """The catalog serves `model_version` from now on (a reindex switched its pages to it)."""
    stmt = _insert(session, Serving).values(id=1, model_version=model_version, since=utcnow())
    stmt = stmt.on_conflict_do_update(
        index_elements=[Serving.id],
        set_={"model_version": stmt.excluded.model_version, "since": stmt.excluded.since},
        where=Serving.model_version != stmt.excluded.model_version,
    )
    session.execute(stmt)


# -- API keys (kb.apikeys makes the keys and checks them)


def add_api_key(
    session: Session, *, key_id: str, name: str, key_hash: str, collections: Iterable[str]
) -> ApiKey:
    key = ApiKey(
        id=key_id,
        name=name,
        key_hash=key_hash,
        created_at=utcnow(),
        collections=[ApiKeyCollection(collection=c) for c in sorted(set(collections))],
    )
    session.add(key)
    session.flush()
    return key


def get_api_key(session: Session, key_id: str) -> ApiKey | None:
    return session.get(ApiKey, key_id, options=[selectinload(ApiKey.collections)])


def list_api_keys(session: Session) -> list[ApiKey]:
    """Every key, oldest first, with its collections."""
    stmt = (
        select(ApiKey)
        .options(selectinload(ApiKey.collections))
        .order_by(ApiKey.created_at, ApiKey.id)
    )
    return list(session.scalars(stmt))


def delete_api_key(session: Session, key_id: str) -> bool:
    """Delete a key (its collections cascade); False if it was not there."""
    return _rowcount(session.execute(delete(ApiKey).where(ApiKey.id == key_id))) > 0


# -- helpers


def _insert(session: Session, model: type[Any]) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (both SQLite and PostgreSQL support it)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"the catalog supports SQLite and PostgreSQL, not {dialect}")


def _rowcount(result: Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount
