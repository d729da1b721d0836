"""Catalog tables: collections, documents, their pages, admin jobs, the serving model version,
and scoped API keys.

The same models serve SQLite (embedded default) and PostgreSQL; the schema itself is created by
the Alembic migrations in `migrations/`, never by `create_all`, so both stay in step
(tests/kb/test_catalog.py checks that the migrations match these models).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from ingest import TextSource as TextSource  # where a page's text came from


class DocumentStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # a reindex: its pages switched to the job's model version
    FAILED = "failed"
    CANCELLED = "cancelled"  # DELETE /v1/admin/jobs/{id}


class JobKind(StrEnum):
    REINDEX = "reindex"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A document or job id: a UUID4 string, so ids can be made before the row exists."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the zone (timestamptz); SQLite stores text without one and would hand back
    naive datetimes, so values are normalised to UTC on the way in and tagged UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; use an aware one (datetime.now(UTC))")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StatusString(TypeDecorator[str]):
    """A status column: plain text in the database, checked against its enum when written.

    Binding the enum's `.value` matters: psycopg would dump a StrEnum member by its *name*
    ("READY"), which the CHECK constraint would then refuse.
    """

    impl = String(16)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    # Named constraints: Alembic can only alter or drop a constraint it can name, and SQLite's
    # batch mode (table copy) needs the names to rebuild them.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    documents: Mapped[list[Document]] = relationship(back_populates="collection")

    def __repr__(self) -> str:
        return f"Collection(id={self.id!r}, name={self.name!r})"


# The documents that count as "this file is already in the collection": a failed one does not, so
# the same bytes can be uploaded again after a failure.
LIVE_DOCUMENT = f"status != '{DocumentStatus.FAILED.value}'"


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        # The list view and the packer filter a collection by status.
        Index(None, "collection_id", "status"),
        # One live document per collection and content: concurrent uploads of the same bytes
        # race on this index, and the loser gets the winner's document (repo.add_document).
        Index(
            None,
            "collection_id",
            "sha256",
            unique=True,
            sqlite_where=text(LIVE_DOCUMENT),
            postgresql_where=text(LIVE_DOCUMENT),
        ),
        CheckConstraint(_in("status", DocumentStatus), name="status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id"))
    filename: Mapped[str] = mapped_column(String(1024))
    content_type: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # uploads can pass 2 GiB
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # duplicate uploads
    original_key: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(
        StatusString(DocumentStatus), default=DocumentStatus.QUEUED.value
    )
    error: Mapped[str | None] = mapped_column(Text)
    pages_total: Mapped[int | None] = mapped_column(Integer)  # known once rendering starts
    pages_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Pinned: the packer keeps its pages at the exact text tier before any other page's.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # When work on the document last moved (queued, a status, a chunk rendered or encoded; not a
    # pin): the sweep re-drives a queued or processing document whose progress_at is too old.
    progress_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="documents")
    # passive_deletes: the database's ON DELETE CASCADE removes pages; the ORM need not load them.
    pages: Mapped[list[Page]] = relationship(
        back_populates="document",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Page.number",
    )

    def __repr__(self) -> str:
        return f"Document(id={self.id!r}, filename={self.filename!r}, status={self.status!r})"


class Page(Base):
    __tablename__ = "pages"
    # Also the index for "pages of a document", so document_id needs no index of its own.
    __table_args__ = (
        UniqueConstraint("document_id", "number"),
        CheckConstraint(_in("text_source", TextSource), name="text_source"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)  # 1-based, as users and citations count
    content_hash: Mapped[str] = mapped_column(String(64), index=True)  # sha256 hex of the page
    text: Mapped[str] = mapped_column(Text, default="")
    # The text tier's origin: the document's text layer, or OCR of a page that had none.
    text_source: Mapped[str] = mapped_column(
        StatusString(TextSource),
        default=TextSource.TEXT_LAYER.value,
        server_default=TextSource.TEXT_LAYER.value,
    )
    image_key: Mapped[str] = mapped_column(String(1024))
    # The model version whose tensors for this page are complete and serving; NULL until the
    # first encode finishes. A reindex flips it only when the new tensors are all written.
    encoded_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    document: Mapped[Document] = relationship(back_populates="pages")

    def __repr__(self) -> str:
        return f"Page(document_id={self.document_id!r}, number={self.number!r})"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(_in("status", JobStatus), name="status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    # NULL: the job spans every collection.
    collection_id: Mapped[int | None] = mapped_column(ForeignKey("collections.id"))
    # The version the job re-encodes for (its target): only a worker running it takes the job.
    model_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(StatusString(JobStatus), default=JobStatus.QUEUED.value)
    # A recount of its job_pages (done ones, all), never `+ n`: a batch run twice counts once.
    done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    progress_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # as documents'

    collection: Mapped[Collection | None] = relationship()

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r}, status={self.status!r})"


class JobPage(Base):
    """A page a reindex job re-encodes, and whether its batch has written the new tensors.

    Listed once when the job is planned; a job stopped mid-way resumes with the pages not done,
    and its progress is a count of these rows. A deleted page leaves the job with it.
    """

    __tablename__ = "job_pages"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    page_id: Mapped[int] = mapped_column(
        ForeignKey("pages.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    done: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Serving(Base):
    """The one model version the catalog serves: the version every process should run.

    One row (id 1), recorded by the first API or worker process to start on an empty catalog
    and moved by a reindex to another version when it switches its pages (kb.serving).
    """

    __tablename__ = "serving"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1, autoincrement=False)
    model_version: Mapped[str] = mapped_column(String(64))
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"Serving(model_version={self.model_version!r})"


class ApiKey(Base):
    """A key an administrator made, limited to some collections (kb.apikeys); the key itself is
    never stored, only its hash."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))  # a label for people; not unique
    key_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the whole key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # passive_deletes: the database's ON DELETE CASCADE removes them with the key.
    collections: Mapped[list[ApiKeyCollection]] = relationship(
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ApiKeyCollection.collection",
    )

    def __repr__(self) -> str:  # never the hash
        return f"ApiKey(id={self.id!r}, name={self.name!r})"


class ApiKeyCollection(Base):
    """One collection a key may use, by name: collections are made by their first upload, so a
    key can be made for one that has no document yet, and keeps it when it is deleted."""

    __tablename__ = "api_key_collections"

    api_key_id: Mapped[str] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    collection: Mapped[str] = mapped_column(String(100), primary_key=True)
