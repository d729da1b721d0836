"""The catalog on both backends: SQLite (a temp file) and PostgreSQL (a fresh database)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kb.catalog import (
    Base,
    Collection,
    Document,
    Job,
    Page,
    Serving,
    current_revision,
    head_revision,
    make_engine,
    normalize_url,
    repo,
    session_factory,
    upgrade,
)
from kb.catalog import db as catalog_db

pytest_plugins = ["tests.conftest_services"]

TABLES = {
    "alembic_version",
    "collections",
    "documents",
    "pages",
    "jobs",
    "job_pages",
    "serving",
    "api_keys",
    "api_key_collections",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, never migrated."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
        return
    # A database per test (not the shared `postgres_url`): these tests start from empty.
    from tests.conftest_services import create_database, drop_database

    admin_url = request.getfixturevalue("postgres_admin_url")
    url = create_database(admin_url)
    try:
        yield url
    finally:
        drop_database(admin_url, url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def _doc(
    session: Session, collection: str = "default", name: str = "a.pdf", sha256: str = ""
) -> Document:
    # Distinct names, distinct contents: one live document per collection and content hash.
    return repo.create_document(
        session,
        collection=collection,
        filename=name,
        content_type="application/pdf",
        size_bytes=1234,
        sha256=sha256 or hashlib.sha256(name.encode()).hexdigest(),
        original_key=f"originals/{name}",
    )


def _add_pages(session: Session, doc: Document, count: int) -> list[Page]:
    return [
        repo.upsert_page(
            session,
            document_id=doc.id,
            number=n,
            content_hash=f"{doc.id}-{n}",
            text=f"page {n}",
            image_key=f"pages/{doc.id}/{n}.png",
        )
        for n in range(1, count + 1)
    ]


def _in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run work(i) in `count` threads released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as e:  # reported by the caller's assert
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# -- engines and migrations


def test_normalize_url_selects_psycopg() -> None:
    for given in ["postgres://u:p@h:5/db", "postgresql://u:p@h:5/db"]:
        assert normalize_url(given).drivername == "postgresql+psycopg"
        assert normalize_url(given).database == "db"
    assert normalize_url("postgresql+psycopg://h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_sqlite_connections_are_set_up_for_several_processes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'dir' / 'c.sqlite3'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()) >= 10_000
    engine.dispose()


def test_upgrade_from_empty_to_head_then_no_op(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) == set()

        upgrade(db_url)
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) == TABLES

        upgrade(db_url)  # already at head: nothing happens, nothing fails
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_back(db_url: str) -> None:
    from alembic import command

    upgrade(db_url)
    with catalog_db.migration_connection(db_url) as conn:
        config = catalog_db.alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    engine = make_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(db_url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_upgrade_from_several_processes_at_once(db_url: str) -> None:
    # API and worker processes all migrate at start-up; they must queue, not collide. Each
    # process imports, says "ready", and waits for "go", so that the migrations really overlap.
    script = (
        "import sys; from kb.catalog import upgrade; print('ready', flush=True); "
        "sys.stdin.readline(); upgrade(sys.argv[1])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n"  # "" if it died: its stderr follows below
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * len(procs), errors
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


# -- documents and pages


def test_document_round_trip(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        doc = _doc(s, collection="manuals", name="guide.pdf")
        s.commit()
        doc_id = doc.id

    with sessions() as s:
        got = repo.get_document(s, doc_id)
        assert got is not None
        assert len(got.id) == 36
        assert got.collection.name == "manuals"
        assert (got.filename, got.content_type, got.size_bytes) == (
            "guide.pdf",
            "application/pdf",
            1234,
        )
        assert got.sha256 == hashlib.sha256(b"guide.pdf").hexdigest()
        assert got.original_key == "originals/guide.pdf"
        assert got.status == "queued" and got.error is None
        assert got.pages_total is None and got.pages_done == 0
        assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - got.created_at) < timedelta(minutes=1)
        created, updated = got.created_at, got.updated_at

    with sessions() as s:
        assert repo.set_status(s, doc_id, "failed", error="unreadable PDF")
        assert repo.set_pages_total(s, doc_id, 7)
        s.commit()
    with sessions() as s:
        got = repo.get_document(s, doc_id)
        assert got is not None
        assert (got.status, got.error, got.pages_total) == ("failed", "unreadable PDF", 7)
        assert got.created_at == created and got.updated_at >= updated

    with sessions() as s:
        assert repo.get_document(s, "00000000-0000-4000-8000-000000000000") is None
        assert not repo.set_status(s, "00000000-0000-4000-8000-000000000000", "ready")


def test_document_id_can_be_chosen(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        doc = repo.create_document(
            s,
            collection="default",
            filename="x.txt",
            content_type="text/plain",
            size_bytes=1,
            sha256="00" * 32,
            original_key="originals/11111111-1111-4111-8111-111111111111",
            document_id="11111111-1111-4111-8111-111111111111",
        )
        s.commit()
        assert doc.id == "11111111-1111-4111-8111-111111111111"


def test_status_must_be_known(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        doc = _doc(s)
        s.commit()
        with pytest.raises(ValueError):
            repo.set_status(s, doc.id, "done")  # a job status, not a document status
        s.rollback()
        # The database refuses it too, whoever writes the row.
        with pytest.raises(IntegrityError):
            s.execute(text("UPDATE documents SET status = 'bogus'"))
            s.flush()


def test_list_documents_by_collection(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        a1, b1, a2 = _doc(s, "a", "1"), _doc(s, "b", "2"), _doc(s, "a", "3")
        a1.created_at = datetime(2024, 1, 1, tzinfo=UTC)
        b1.created_at = datetime(2024, 1, 2, tzinfo=UTC)
        a2.created_at = datetime(2024, 1, 3, tzinfo=UTC)
        s.commit()
    with sessions() as s:
        assert [d.filename for d in repo.list_documents(s, "a")] == ["1", "3"]
        assert [d.filename for d in repo.list_documents(s)] == ["1", "2", "3"]
        assert repo.list_documents(s, "nothing") == []
        assert [d.collection.name for d in repo.list_documents(s)] == ["a", "b", "a"]


def test_find_document_by_sha256(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        doc = _doc(s, "a", sha256="ab" * 32)
        s.commit()
        assert repo.find_document_by_sha256(s, "a", "ab" * 32) == doc
        assert repo.find_document_by_sha256(s, "b", "ab" * 32) is None
        repo.set_status(s, doc.id, "failed", "x")
        assert repo.find_document_by_sha256(s, "a", "ab" * 32) is None


def test_same_content_uploaded_at_once_makes_one_document(
    sessions: sessionmaker[Session],
) -> None:
    """Ten uploads of the same bytes released together: one document, which all ten get."""
    fields = dict(
        collection="race",
        filename="same.pdf",
        content_type="application/pdf",
        size_bytes=10,
        sha256="cd" * 32,
    )
    results: list[tuple[str, bool]] = []

    def upload(i: int) -> None:
        with sessions() as s:
            doc, created = repo.add_document(s, original_key=f"originals/{i}", **fields)
            s.commit()
            results.append((doc.id, created))

    _in_threads(10, upload)
    assert len({doc_id for doc_id, _ in results}) == 1, results
    assert [created for _, created in results].count(True) == 1
    with sessions() as s:
        assert len(repo.list_documents(s, "race")) == 1
        # A failed document no longer counts: the same bytes may be uploaded again.
        repo.set_status(s, results[0][0], "failed", "x")
        again, created = repo.add_document(s, original_key="originals/again", **fields)
        assert created and again.id != results[0][0]
        s.commit()
        # The unique index itself refuses a second live copy, whoever inserts it.
        with pytest.raises(IntegrityError):
            repo.create_document(s, original_key="originals/third", **fields)


def test_migration_keeps_the_first_of_earlier_duplicates(db_url: str) -> None:
    upgrade(db_url, "0002")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO collections (id, name, created_at) VALUES (1, 'c', :t)"),
                {"t": datetime(2026, 1, 1, tzinfo=UTC)},
            )
            for i, status in enumerate(["ready", "queued", "failed", "ready"]):
                conn.execute(
                    text(
                        "INSERT INTO documents (id, collection_id, filename, content_type,"
                        " size_bytes, sha256, original_key, status, pages_done, pinned,"
                        " created_at, updated_at) VALUES (:id, 1, 'f', 't', 1, :sha, 'k',"
                        " :status, 0, false, :t, :t)"
                    ),
                    {
                        "id": f"doc-{i}",
                        "sha": "ee" * 32 if i < 3 else "ff" * 32,
                        "status": status,
                        "t": datetime(2026, 1, 1, 0, i, tzinfo=UTC),
                    },
                )
        upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, status, error FROM documents ORDER BY id"))
            got = [(r.id, r.status, r.error is None) for r in rows]
    finally:
        engine.dispose()
    assert got == [
        ("doc-0", "ready", True),
        ("doc-1", "failed", False),  # the second live copy of doc-0
        ("doc-2", "failed", True),  # failed already: untouched
        ("doc-3", "ready", True),
    ]


def test_collection_names_are_checked(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        for bad in ("", "x" * 101, "a\x00b", "tab\there", "line\n", "\x9bcsi"):
            with pytest.raises(ValueError, match="collection name"):
                repo.get_or_create_collection(s, bad)
        assert repo.get_or_create_collection(s, "Übersicht 日本 ok").name == "Übersicht 日本 ok"


def test_upsert_page_is_idempotent(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        doc = _doc(s)
        first = repo.upsert_page(
            s, document_id=doc.id, number=1, content_hash="h1", text="old", image_key="k1"
        )
        repo.mark_pages_encoded(s, [first.id], "v1")
        s.commit()

        # Same content again (a rerun render): same row, and its tensors still count.
        again = repo.upsert_page(
            s, document_id=doc.id, number=1, content_hash="h1", text="new", image_key="k2"
        )
        assert again.id == first.id
        assert (again.text, again.image_key, again.encoded_version) == ("new", "k2", "v1")

        # Changed content: the old tensors no longer describe the page.
        changed = repo.upsert_page(
            s, document_id=doc.id, number=1, content_hash="h2", text="t", image_key="k3"
        )
        assert changed.id == first.id
        assert (changed.content_hash, changed.encoded_version) == ("h2", None)
        s.commit()
        assert s.scalar(select(func.count()).select_from(Page)) == 1
        got = repo.get_page(s, doc.id, 1)
        assert got is not None and got.content_hash == "h2"
        assert repo.get_page(s, doc.id, 2) is None
        with pytest.raises(ValueError):
            repo.upsert_page(
                s, document_id=doc.id, number=0, content_hash="h", text="", image_key="k"
            )


def test_page_number_unique_per_document(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        doc = _doc(s)
        s.add(Page(document_id=doc.id, number=1, content_hash="h", text="", image_key="k"))
        s.commit()
        s.add(Page(document_id=doc.id, number=1, content_hash="h", text="", image_key="k"))
        with pytest.raises(IntegrityError):
            s.commit()


def test_delete_document_cascades_to_pages(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        keep, gone = _doc(s, name="keep"), _doc(s, name="gone")
        _add_pages(s, keep, 2)
        _add_pages(s, gone, 3)
        s.commit()
        gone_id = gone.id

    with sessions() as s:
        assert repo.delete_document(s, gone_id)
        s.commit()
    with sessions() as s:
        assert repo.get_document(s, gone_id) is None
        counts = dict(
            s.execute(select(Page.document_id, func.count()).group_by(Page.document_id)).all()
        )
        assert counts == {keep.id: 2}
        assert not repo.delete_document(s, gone_id)


def test_record_pages_done(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        doc = _doc(s)
        repo.set_pages_total(s, doc.id, 3)
        pages = _add_pages(s, doc, 3)
        assert repo.record_pages_done(s, doc.id) == (0, 3)
        repo.mark_pages_encoded(s, [p.id for p in pages[:2]], "v1")
        assert repo.record_pages_done(s, doc.id) == (2, 3)
        s.commit()
        assert repo.record_pages_done(s, "00000000-0000-4000-8000-000000000000") is None
    with sessions() as s:
        got = repo.get_document(s, doc.id)
        assert got is not None and got.pages_done == 2


def test_record_pages_done_from_concurrent_workers(
    sessions: sessionmaker[Session], db_url: str
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite runs one write transaction at a time: nothing interleaves")
    with sessions() as s:
        doc = _doc(s)
        repo.set_pages_total(s, doc.id, 8)
        s.commit()
    both_encoded = threading.Barrier(2)

    def encode_half(i: int) -> None:
        # Each worker writes its half and recounts before the other has committed: the recount
        # must still end up counting both halves.
        with sessions() as s:
            for n in range(1 + 4 * i, 5 + 4 * i):
                page = repo.upsert_page(
                    s, document_id=doc.id, number=n, content_hash=str(n), text="", image_key="k"
                )
                repo.mark_pages_encoded(s, [page.id], "v1")
            both_encoded.wait()
            repo.record_pages_done(s, doc.id)
            s.commit()

    _in_threads(2, encode_half)
    with sessions() as s:
        got = repo.get_document(s, doc.id)
        assert got is not None and (got.pages_done, got.pages_total) == (8, 8)


def test_ready_pages(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        newer, older = _doc(s, "a", "newer"), _doc(s, "a", "older")
        processing, elsewhere = _doc(s, "a", "processing"), _doc(s, "b", "elsewhere")
        newer.created_at = datetime(2024, 2, 1, tzinfo=UTC)
        older.created_at = datetime(2024, 1, 1, tzinfo=UTC)
        for doc in (newer, older, processing, elsewhere):
            _add_pages(s, doc, 2)
        for doc in (newer, older, elsewhere):
            repo.set_status(s, doc.id, "ready")
        repo.set_status(s, processing.id, "processing")
        s.commit()

    with sessions() as s:
        pages = repo.ready_pages(s, "a")
        assert [(p.document.filename, p.number) for p in pages] == [
            ("older", 1),
            ("older", 2),
            ("newer", 1),
            ("newer", 2),
        ]
        assert repo.ready_pages(s, "nothing") == []

        every = repo.pages_of_collection(s, "a")
        assert {p.document.filename for p in every} == {"newer", "older", "processing"}
        assert len(repo.pages_of_collection(s, None)) == 8


# -- collections and jobs


def test_get_or_create_collection_from_threads(sessions: sessionmaker[Session]) -> None:
    for attempt in range(3):  # several rounds: each is one chance for the race to happen
        name = f"race-{attempt}"
        ids: list[int] = []

        def create(_: int, name: str = name, ids: list[int] = ids) -> None:
            with sessions() as s:
                ids.append(repo.get_or_create_collection(s, name).id)
                s.commit()

        _in_threads(4, create)
        with sessions() as s:
            rows = s.scalars(select(Collection).where(Collection.name == name)).all()
        assert len(rows) == 1
        assert ids == [rows[0].id] * 4


def test_collection_name_is_checked(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        for bad in ["", "x" * 101]:
            with pytest.raises(ValueError):
                repo.get_or_create_collection(s, bad)


def test_job_round_trip(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        job = repo.create_job(s, model_version="ref-2", collection="manuals", total=3)
        everywhere = repo.create_job(s, model_version="ref-2")
        s.commit()
        job_id = job.id

    with sessions() as s:
        got = repo.get_job(s, job_id)
        assert got is not None
        assert (got.kind, got.status, got.done, got.total) == ("reindex", "queued", 0, 3)
        assert got.collection is not None and got.collection.name == "manuals"
        assert got.created_at.utcoffset() == timedelta(0)
        other = repo.get_job(s, everywhere.id)
        assert other is not None and other.collection_id is None

        assert repo.set_job_status(s, job_id, "running")
        assert repo.set_job_status(s, job_id, "done")
        assert repo.set_job_status(s, everywhere.id, "failed", error="no model")
        # A finished job keeps its status: it is finished once.
        for finished in (job_id, everywhere.id):
            assert not repo.set_job_status(s, finished, "cancelled")
            assert not repo.set_job_status(s, finished, "running")
        with pytest.raises(ValueError):
            repo.set_job_status(s, job_id, "paused")
        s.commit()
    with sessions() as s:
        assert repo.get_job(s, job_id).status == "done"  # type: ignore[union-attr]
        failed = repo.get_job(s, everywhere.id)
        assert failed is not None and (failed.status, failed.error) == ("failed", "no model")
        assert repo.get_job(s, "missing") is None
        assert not repo.set_job_status(s, "missing", "failed")
        assert repo.finish_job_pages(s, "missing", []) is None


def test_job_progress_is_a_recount(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        ready, failed, other = _doc(s, "c", "ready"), _doc(s, "c", "failed"), _doc(s, "d", "o")
        pages = _add_pages(s, ready, 4)
        failed_pages, other_pages = _add_pages(s, failed, 2), _add_pages(s, other, 1)
        repo.mark_pages_encoded(s, [p.id for p in pages[:3] + failed_pages + other_pages], "v1")
        repo.set_status(s, failed.id, "failed", error="bad")
        job = repo.create_job(s, model_version="v2", collection="c")
        # The encoded pages of documents that did not fail (page 4 is not encoded yet: its
        # encode task encodes it for whatever version its worker runs).
        assert repo.plan_job_pages(s, job.id, "c") == 3
        assert repo.plan_job_pages(s, job.id, "c") == 0  # listed once
        assert repo.recount_job(s, job.id) == (0, 3)
        first, second = [pages[0].id, pages[1].id], [pages[2].id]
        assert repo.finish_job_pages(s, job.id, first) == (2, 3)
        assert repo.finish_job_pages(s, job.id, first) == (2, 3)  # a batch redelivered: once
        assert [p.id for p in repo.job_pages(s, job.id, done=False)] == second
        # A page deleted meanwhile leaves the job: the count stays exact and can reach the end.
        s.delete(pages[2])
        s.flush()
        assert repo.finish_job_pages(s, job.id, second) == (2, 2)
        everywhere = repo.create_job(s, model_version="v2")
        assert repo.plan_job_pages(s, everywhere.id, None) == 3  # page 1, 2 of c and d's page
        assert repo.set_job_status(s, everywhere.id, "cancelled")
        assert repo.finish_job_pages(s, everywhere.id, [other_pages[0].id]) is None
        assert repo.recount_job(s, everywhere.id) == (0, 3)  # nothing was marked


def test_identical_jobs_started_at_once_make_one(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        repo.get_or_create_collection(s, "c")
        s.commit()
    for collection in ("c", None):
        started: list[tuple[str, bool]] = []

        def start(_: int, collection: str | None = collection, started: list = started) -> None:
            with sessions() as s:
                job, created = repo.start_job(s, model_version="v2", collection=collection)
                s.commit()
                started.append((job.id, created))

        _in_threads(4, start)
        assert len({job_id for job_id, _ in started}) == 1, started
        assert sorted(created for _, created in started) == [False, False, False, True]
    with sessions() as s:
        # Another target, or a finished job, does not count as identical.
        job, created = repo.start_job(s, model_version="v3", collection=None)
        assert created
        assert repo.set_job_status(s, job.id, "failed", error="x")
        assert repo.start_job(s, model_version="v3", collection=None)[1]
        assert len(s.scalars(select(Job)).all()) == 4


def test_the_serving_version_is_claimed_once_then_moved(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        assert repo.serving_version(s) is None
        assert repo.claim_serving_version(s, "v1") == "v1"
        assert repo.claim_serving_version(s, "v2") == "v1"  # a second process: not its own
        s.commit()
    with sessions() as s:
        repo.set_serving_version(s, "v2")
        repo.set_serving_version(s, "v2")
        s.commit()
        assert repo.serving_version(s) == "v2"
        assert len(s.scalars(select(Serving)).all()) == 1


def test_migration_records_the_most_common_encoded_version(db_url: str) -> None:
    upgrade(db_url, "0004")
    engine = make_engine(db_url)
    t = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO collections (id, name, created_at) VALUES (1, 'c', :t)"),
                {"t": t},
            )
            conn.execute(
                text(
                    "INSERT INTO documents (id, collection_id, filename, content_type,"
                    " size_bytes, sha256, original_key, status, pages_done, pinned,"
                    " created_at, updated_at, progress_at) VALUES ('d', 1, 'f', 't', 1, 'ee',"
                    " 'k', 'ready', 0, false, :t, :t, :t)"
                ),
                {"t": t},
            )
            for n, version in enumerate(["old", "new", "new", None], start=1):
                conn.execute(
                    text(
                        "INSERT INTO pages (document_id, number, content_hash, text, image_key,"
                        " encoded_version, created_at) VALUES ('d', :n, :n, '', 'k', :v, :t)"
                    ),
                    {"n": n, "v": version, "t": t},
                )
        upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, model_version FROM serving")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "new")]
