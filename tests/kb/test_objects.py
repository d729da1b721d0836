"""Delete is real: what a document stored is gone after it is deleted, shared content stays.

Every test runs twice, on the embedded defaults (SQLite, a local store directory) and on real
servers (PostgreSQL, an S3-protocol server on loopback), and looks at every key in the store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from kb import collections, objects, pipeline, reader
from kb.catalog import repo
from kb.catalog.models import new_id
from kb.context import Context
from kb.keys import TENSORS, content_hash_of, page_image_key, tensor_key
from kb.model.base import PageTensors
from kb.model.reference.backend import ReferenceBackend
from kb.scratch import remove_abandoned, scratch_dir
from kb.settings import Settings
from kb.store import LocalStore
from tests.conftest_services import create_database, drop_database
from tests.kb.model.reference.conftest import tiny_config
from tests.stack import make_pdf

if TYPE_CHECKING:
    from tests.conftest_services import S3Server

pytest_plugins = ["tests.conftest_services"]


@pytest.fixture(params=["embedded", "services"])
def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Context]:
    if request.param == "embedded":
        c = Context(Settings(data_dir=tmp_path / "data", render_chunk_pages=2))
        c._backend = ReferenceBackend(config=tiny_config())
        yield c
        c.close()
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    s3: S3Server = request.getfixturevalue("s3_server")
    url = create_database(admin_url)  # a database and a bucket of its own: sweeps see all
    settings = Settings(
        data_dir=tmp_path / "data",
        render_chunk_pages=2,
        database_url=url,
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,  # type: ignore[arg-type]
        s3_bucket=f"kb-objects-{uuid.uuid4().hex[:12]}",
    )
    c = Context(settings)
    c._backend = ReferenceBackend(config=tiny_config())
    try:
        yield c
    finally:
        c.close()
        drop_database(admin_url, url)


def keys(ctx: Context) -> set[str]:
    return set(ctx.store.list())


def upload(ctx: Context, path: Path, collection: str = "default") -> str:
    doc_id = new_id()
    key = pipeline.original_key(doc_id, path.name)
    ctx.store.put_file(key, path)
    with ctx.session() as s:
        repo.create_document(
            s,
            collection=collection,
            filename=path.name,
            content_type="application/pdf",
            size_bytes=path.stat().st_size,
            sha256=uuid.uuid4().hex,
            original_key=key,
            document_id=doc_id,
        )
    return doc_id


def ingest(ctx: Context, doc_id: str) -> None:
    chunks: list[list[int]] = []
    pipeline.render_document(ctx, doc_id, on_chunk=chunks.append)
    for numbers in chunks:
        pipeline.encode_pages(ctx, doc_id, numbers)
    with ctx.session() as s:
        doc = repo.get_document(s, doc_id)
        assert doc is not None and doc.status == "ready", doc


def hashes(ctx: Context, doc_id: str) -> set[str]:
    with ctx.session() as s:
        return repo.page_hashes(s, doc_id)


def test_delete_removes_everything_no_other_page_shares(ctx: Context, tmp_path: Path) -> None:
    other = upload(ctx, make_pdf(tmp_path / "o.pdf", ["Shared page.", "Other's own."]), "else")
    ingest(ctx, other)
    before = keys(ctx)
    doc = upload(ctx, make_pdf(tmp_path / "d.pdf", ["CONFIDENTIAL salary 1.", "Shared page."]))
    ingest(ctx, doc)
    shared = hashes(ctx, doc) & hashes(ctx, other)
    assert len(shared) == 1  # the same page in both documents: one set of objects
    added = keys(ctx) - before
    assert any(k.startswith("originals/") for k in added)
    assert any(k.startswith("pages/") for k in added)
    assert any(k.startswith(TENSORS) for k in added)

    assert objects.delete_document(ctx, doc)
    assert keys(ctx) == before  # nothing of it is left, everything of the other is
    assert not objects.delete_document(ctx, doc)
    assert reader.read_page(ctx, other, 1, "text").startswith("Shared page.")
    assert reader.ask(ctx, "Which page?", "else").pages == 2

    assert objects.delete_document(ctx, other)
    assert keys(ctx) == set()


def test_deleting_a_collection_removes_all_of_its_documents_and_nothing_else(
    ctx: Context, tmp_path: Path
) -> None:
    other = upload(ctx, make_pdf(tmp_path / "o.pdf", ["Shared page.", "Other's own."]), "kept")
    ingest(ctx, other)
    before = keys(ctx)
    docs = [
        upload(ctx, make_pdf(tmp_path / "a.pdf", ["Salaries 2025.", "Shared page."]), "hr"),
        upload(ctx, make_pdf(tmp_path / "b.pdf", ["Salaries 2026."]), "hr"),
    ]
    for doc in docs:
        ingest(ctx, doc)
    queued = upload(ctx, make_pdf(tmp_path / "c.pdf", ["Not rendered yet."]), "hr")
    with ctx.session() as s:  # a reindex job of the collection goes with it
        repo.create_job(s, model_version=ctx.backend.version, collection="hr")
    assert collections.visible(ctx, None) == [
        collections.CollectionInfo("hr", documents=3, pages=3),
        collections.CollectionInfo("kept", documents=1, pages=2),
    ]
    assert collections.visible(ctx, {"hr", "new"}) == [
        collections.CollectionInfo("hr", documents=3, pages=3),
        collections.CollectionInfo("new", documents=0, pages=0),  # may be uploaded to
    ]
    assert any(k.startswith("originals/") and queued in k for k in keys(ctx))

    assert collections.delete(ctx, "hr")
    assert keys(ctx) == before  # nothing of its documents is left, everything of the other is
    with ctx.session() as s:
        assert repo.get_collection(s, "hr") is None
        assert [d.id for d in repo.list_documents(s)] == [other]
    assert collections.visible(ctx, None) == [collections.CollectionInfo("kept", 1, 2)]
    assert not collections.delete(ctx, "hr")
    assert reader.read_page(ctx, other, 1, "text").startswith("Shared page.")
    assert reader.ask(ctx, "Which page?", "kept").pages == 2


def test_an_ingest_still_running_after_the_delete_cleans_up(ctx: Context, tmp_path: Path) -> None:
    before = keys(ctx)
    doc = upload(ctx, make_pdf(tmp_path / "d.pdf", ["Page one.", "Page two."]))
    chunks: list[list[int]] = []
    pipeline.render_document(ctx, doc, on_chunk=chunks.append)
    assert chunks == [[1, 2]]

    class DeletingBackend(ReferenceBackend):
        """The real backend; the document is deleted while its first batch is encoded."""

        def encode(self, images: list[Image.Image], tier: str) -> list[PageTensors]:
            if objects.delete_document(ctx, doc):
                assert keys(ctx) == before  # the delete took everything there was ...
            return super().encode(images, tier)

    ctx._backend = DeletingBackend(config=tiny_config())
    assert pipeline.encode_pages(ctx, doc, [1, 2]) == (0, None)
    # ... and the tensors written after it are collected by the task that wrote them.
    assert keys(ctx) == before


def test_a_page_stored_again_during_a_delete_keeps_its_objects(
    ctx: Context, tmp_path: Path
) -> None:
    """The delete of the last document with a page, and a render storing that page again,
    overlap: the delete's collector must wait for the render, then find the page in use."""
    old = upload(ctx, make_pdf(tmp_path / "old.pdf", ["Shared page.", "Old's own."]))
    ingest(ctx, old)
    with ctx.session() as s:
        page = repo.get_page(s, old, 1)
        assert page is not None
        shared = page.content_hash
    new = upload(ctx, make_pdf(tmp_path / "new.pdf", ["Shared page."]))

    render_thread = threading.get_ident()
    deleter = threading.Thread(target=objects.delete_document, args=(ctx, old))
    real = ctx.store
    calls = 0

    class PausingStore:
        """The real store; the render pauses once it checks the shared image under the lock
        (its second look), and the delete of the old document starts then."""

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def exists(self, key: str) -> bool:
            nonlocal calls
            if threading.get_ident() == render_thread and key == page_image_key(shared):
                calls += 1
                if calls == 2:
                    deleter.start()
                    time.sleep(1.5)
                    assert deleter.is_alive(), "the collector did not wait for the render"
            return real.exists(key)

    ctx.store = PausingStore()  # type: ignore[assignment]
    try:
        pipeline.render_document(ctx, new)
    finally:
        ctx.store = real
    deleter.join(timeout=60)
    assert calls == 2 and not deleter.is_alive()
    assert hashes(ctx, new) == {shared}
    assert real.exists(page_image_key(shared))  # the new document's page kept its image
    for h in hashes(ctx, old) - {shared}:
        assert not real.exists(page_image_key(h))
    pipeline.encode_pages(ctx, new, [1])
    assert reader.read_page(ctx, new, 1, "text").startswith("Shared page.")


def test_a_reindex_collects_the_superseded_versions_tensors(ctx: Context, tmp_path: Path) -> None:
    doc = upload(ctx, make_pdf(tmp_path / "d.pdf", ["Shared page.", "Reindexed only."]))
    ingest(ctx, doc)
    other = upload(ctx, make_pdf(tmp_path / "o.pdf", ["Shared page."]), collection="else")
    ingest(ctx, other)
    old_version = ctx.backend.version
    (only_doc,) = hashes(ctx, doc) - hashes(ctx, other)
    (shared,) = hashes(ctx, other)

    ctx._backend = ReferenceBackend(config=tiny_config(d_model=48))  # other weights
    new_version = ctx.backend.version
    assert new_version != old_version
    with ctx.session() as s:
        job = repo.create_job(s, model_version=new_version, collection="default").id
    for batch in pipeline.reindex_plan(ctx, job, batch_size=1):
        pipeline.reindex_pages(ctx, job, batch)

    tiers = sorted(ctx.backend.tier_tokens)
    stored = keys(ctx)
    for tier in tiers:
        assert tensor_key(new_version, tier, only_doc) in stored
        assert tensor_key(new_version, tier, shared) in stored
        assert tensor_key(old_version, tier, only_doc) not in stored  # superseded
        assert tensor_key(old_version, tier, shared) in stored  # still serves the other one
    old_left = {content_hash_of(k) for k in stored if k.startswith(f"{TENSORS}{old_version}/")}
    assert old_left == {shared}
    assert reader.ask(ctx, "Which page?", "default").pages == 2


def test_a_sweep_collects_what_no_page_references(ctx: Context, tmp_path: Path) -> None:
    doc = upload(ctx, make_pdf(tmp_path / "d.pdf", ["Kept."]))
    ingest(ctx, doc)
    live = keys(ctx)
    # What a render or encode killed mid-way for a document deleted since leaves behind.
    orphan = "f" * 64
    version = ctx.backend.version
    ctx.store.put(page_image_key(orphan), b"png")
    ctx.store.put(tensor_key(version, "gist", orphan), b"tensor")
    ctx.store.put(tensor_key("some-old-version", "tiny", orphan), b"tensor")
    if isinstance(ctx.store, LocalStore):  # and the temp file of a write killed long ago
        killed_write = ctx.store.root / "pages" / ".kbtmp-killed"
        killed_write.write_bytes(b"half a png")
        os.utime(killed_write, (time.time() - 7200,) * 2)
    assert objects.sweep(ctx) == objects.SweepResult(contents=1, objects=3)
    assert keys(ctx) == live
    if isinstance(ctx.store, LocalStore):
        assert not killed_write.exists()
    assert objects.sweep(ctx) == objects.SweepResult(contents=0, objects=0)


def test_a_killed_tasks_scratch_directory_is_removed_at_the_next_start(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    code = (
        "import sys, time; from pathlib import Path; from kb.scratch import scratch_dir\n"
        "with scratch_dir(Path(sys.argv[1])) as d:\n"
        "    (d / 'original.pdf').write_bytes(b'x' * 1000); print(d, flush=True); time.sleep(60)\n"
    )
    task = subprocess.Popen(
        [sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert task.stdout is not None
    killed = Path(task.stdout.readline().strip())
    os.kill(task.pid, signal.SIGKILL)  # no finally block runs
    task.wait()
    assert (killed / "original.pdf").exists()
    with scratch_dir(root) as running:
        assert remove_abandoned(root) == 1
        assert not killed.exists()
        assert running.is_dir()  # a live task's directory stays
        assert remove_abandoned(root) == 0
    assert list(root.iterdir()) == []
