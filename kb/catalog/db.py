"""Engines, sessions and schema migrations for the catalog (SQLite by default, or PostgreSQL)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")

# Waiting on another process's write beats failing with "database is locked": the API and the
# workers share one SQLite file, and a worker commits page progress often.
SQLITE_BUSY_TIMEOUT_S = 30
# A migration may copy whole tables (SQLite batch mode), so a process waiting to migrate after
# another one waits longer.
SQLITE_MIGRATION_BUSY_TIMEOUT_S = 600
# Any fixed 64-bit number unique to this application: serialises concurrent `upgrade` calls.
PG_MIGRATION_LOCK_ID = 0x6B62_6361_7461_6C67  # "kbcatalg"


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; PostgreSQL URLs without a driver get psycopg (version 3).

    `postgres://` (Heroku and friends) and `postgresql://` would otherwise select psycopg2,
    which is not installed.
    """
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL) -> Engine:
    """An engine for the catalog at `url`.

    SQLite: the file's directory is created; every connection gets WAL (readers do not block
    the writer), foreign keys (for ON DELETE CASCADE) and a busy timeout. The driver's own
    transaction handling is kept on purpose: a session's reads run outside a transaction until
    its first write, whose BEGIN then waits for the write lock. So read-then-write sessions in
    several processes queue up instead of failing on a stale snapshot; the price is that
    SAVEPOINTs (`begin_nested`) are not reliable on SQLite: use ON CONFLICT instead (see repo).

    Engines must not cross a fork: a process forked after using one (Celery prefork) should
    build its own, or call `engine.dispose(close=False)` first.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, busy_timeout_s=SQLITE_BUSY_TIMEOUT_S, foreign_keys=True)
    # pre_ping: workers hold pooled connections for hours; a restarted server must not surface
    # as an error in the next task.
    return create_engine(parsed, pool_pre_ping=True)


def _sqlite_engine(url: URL, *, busy_timeout_s: float, foreign_keys: bool) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            _enable_wal(cursor, busy_timeout_s)
            cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: no corruption on crash
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    return engine


def _enable_wal(cursor: sqlite3.Cursor, timeout_s: float) -> None:
    # WAL is persistent in the file, so this is a no-op after the first connection ever. That
    # first switch needs an exclusive lock and SQLite does not call the busy handler for it: when
    # several processes open a new catalog at once (API and workers migrating at start-up), all
    # but one get "database is locked" at once. They retry here until the busy timeout.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: handlers and tasks read attributes of rows after committing
    # (to build a response, to enqueue the next task) without a round trip per attribute.
    return sessionmaker(bind=engine, expire_on_commit=False)


# ---------------------------------------------------------------------------------------------
# Migrations


def alembic_config() -> Config:
    """Alembic's config for the catalog's migrations; the URL is never read from the ini."""
    return Config(str(ALEMBIC_INI))


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the catalog at `url` to `revision`; a no-op when it is already there.

    Every process may call this at start-up at the same moment: see `migration_connection`.
    """
    with migration_connection(url) as conn:
        config = alembic_config()
        # env.py runs the migrations on this connection, inside its transaction.
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


@contextmanager
def migration_connection(url: str | URL) -> Iterator[Connection]:
    """A connection in a transaction that holds the catalog's migration lock; commits on exit.

    Migrations run one at a time, each inside one transaction that first takes a lock
    (PostgreSQL: a transaction-scoped advisory lock; SQLite: BEGIN IMMEDIATE, the database's
    write lock). A process that waited then finds the schema current and does nothing.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_migration_engine(parsed)
    else:
        engine = create_engine(parsed)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"), {"id": PG_MIGRATION_LOCK_ID}
                )
            yield conn
    finally:
        engine.dispose()


def _sqlite_migration_engine(url: URL) -> Engine:
    # Foreign keys stay OFF while migrating: SQLite's batch mode rebuilds a table by copying it
    # and dropping the old one, and with foreign keys on that DROP would cascade-delete every
    # row that references it (all pages of all documents).
    engine = _sqlite_engine(url, busy_timeout_s=SQLITE_MIGRATION_BUSY_TIMEOUT_S, foreign_keys=False)

    # Take over transaction control from the driver (SQLAlchemy's documented recipe) so that
    # the DDL runs inside one transaction that starts by taking the write lock.
    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
