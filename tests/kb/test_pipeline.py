"""The pipeline functions the tasks call, on real components in-process (SQLite, local store,
the reference model at a tiny size): chunking, content addressing, idempotency, re-indexing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

import ingest.render as ingest_render
from ingest.tiers import TEXT
from kb import pipeline, reader
from kb.catalog import repo
from kb.catalog.models import Page
from kb.context import Context
from kb.keys import PAGE_IMAGES, page_image_key
from kb.model.reference.backend import ReferenceBackend
from kb.settings import Settings
from kb.tensors import tensor_key
from tests.conftest_services import create_database, drop_database
from tests.ingest.samples import make_scan
from tests.ingest.test_ocr import LINES, WORDS, CountingReader
from tests.kb.model.reference.conftest import tiny_config
from tests.stack import make_pdf


class CountingBackend(ReferenceBackend):
    """The real reference backend, counting the pages it encodes."""

    def __init__(self) -> None:
        super().__init__(config=tiny_config())
        self.encoded: list[str] = []

    def encode(self, images: list[Image.Image], tier: str):  # type: ignore[no-untyped-def]
        self.encoded += [tier] * len(images)
        return super().encode(images, tier)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    c = Context(Settings(data_dir=tmp_path / "data", render_chunk_pages=4))
    c._backend = CountingBackend()
    return c


def upload(ctx: Context, path: Path, collection: str = "default") -> str:
    key = pipeline.original_key(path.stem, path.name)
    ctx.store.put_file(key, path)
    with ctx.session() as s:
        return repo.create_document(
            s,
            collection=collection,
            filename=path.name,
            content_type="application/pdf",
            size_bytes=path.stat().st_size,
            sha256=path.stem,
            original_key=key,
        ).id


def process(ctx: Context, doc_id: str) -> list[list[int]]:
    chunks: list[list[int]] = []
    pipeline.render_document(ctx, doc_id, on_chunk=chunks.append)
    for numbers in chunks:
        pipeline.encode_pages(ctx, doc_id, numbers)
    return chunks


def test_render_in_chunks_then_encode_every_tier(ctx: Context, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "ten.pdf", [f"Page number {i} of ten." for i in range(1, 11)])
    doc_id = upload(ctx, pdf)
    chunks = process(ctx, doc_id)
    assert chunks == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    backend = ctx.backend
    with ctx.session() as s:
        doc = repo.get_document(s, doc_id)
        assert doc is not None
        assert (doc.status, doc.pages_total, doc.pages_done) == ("ready", 10, 10)
        pages = doc.pages
        assert "Page number 7" in pages[6].text
        for p in pages:
            assert p.encoded_version == backend.version
            assert ctx.store.exists(p.image_key)
            for tier in backend.tier_tokens:
                assert ctx.store.exists(tensor_key(backend.version, tier, p.content_hash))
    assert len(backend.encoded) == 10 * len(backend.tier_tokens)


def test_identical_pages_are_encoded_once(ctx: Context, tmp_path: Path) -> None:
    texts = ["Same page A.", "Same page B.", "Same page A."]  # a repeat inside the document too
    first = upload(ctx, make_pdf(tmp_path / "one.pdf", texts))
    process(ctx, first)
    n_tiers = len(ctx.backend.tier_tokens)
    assert len(ctx.backend.encoded) == 2 * n_tiers
    second = upload(ctx, make_pdf(tmp_path / "two.pdf", texts[:2]), collection="other")
    process(ctx, second)
    assert len(ctx.backend.encoded) == 2 * n_tiers  # nothing new to encode
    with ctx.session() as s:
        assert repo.get_document(s, second).status == "ready"  # type: ignore[union-attr]


def test_tasks_are_idempotent(ctx: Context, tmp_path: Path) -> None:
    doc_id = upload(ctx, make_pdf(tmp_path / "a.pdf", ["One.", "Two."]))
    process(ctx, doc_id)
    before = len(ctx.backend.encoded)
    process(ctx, doc_id)  # a redelivered render and its encodes
    assert len(ctx.backend.encoded) == before
    with ctx.session() as s:
        doc = repo.get_document(s, doc_id)
        assert doc is not None and doc.status == "ready" and doc.pages_done == 2


def test_a_deleted_document_is_skipped(ctx: Context, tmp_path: Path) -> None:
    doc_id = upload(ctx, make_pdf(tmp_path / "gone.pdf", ["Bye."]))
    with ctx.session() as s:
        repo.delete_document(s, doc_id)
    assert pipeline.render_document(ctx, doc_id).chunks == []
    assert pipeline.encode_pages(ctx, doc_id, [1]) == (0, None)


def test_a_broken_document_fails_readably(ctx: Context, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4\n" + b"\x00" * 300)
    doc_id = upload(ctx, bad)
    assert pipeline.render_document(ctx, doc_id).failed
    with ctx.session() as s:
        doc = repo.get_document(s, doc_id)
        assert doc is not None and doc.status == "failed"
        assert "could not be opened" in (doc.error or "")


def test_reindex_switches_pages_when_the_last_batch_is_done(ctx: Context, tmp_path: Path) -> None:
    doc_id = upload(ctx, make_pdf(tmp_path / "r.pdf", ["R1.", "R2.", "R3."]))
    process(ctx, doc_id)
    with ctx.session() as s:
        job_id = repo.create_job(s, model_version=ctx.backend.version, collection="default").id
    batches = pipeline.reindex_plan(ctx, job_id, batch_size=2)
    assert [len(b) for b in batches] == [2, 1]
    ctx.backend.encoded.clear()
    pipeline.reindex_pages(ctx, job_id, batches[0])
    with ctx.session() as s:
        job = repo.get_job(s, job_id)
        assert job is not None and (job.status, job.done, job.total) == ("running", 2, 3)
    # Questions are answered while the job runs.
    assert reader.ask(ctx, "R?", "default").pages == 3
    pipeline.reindex_pages(ctx, job_id, batches[1])
    with ctx.session() as s:
        job = repo.get_job(s, job_id)
        assert job is not None and (job.status, job.done, job.total) == ("done", 3, 3)
    assert len(ctx.backend.encoded) == 3 * len(ctx.backend.tier_tokens)  # forced re-encode


def test_ask_and_read_back(ctx: Context, tmp_path: Path) -> None:
    doc_id = upload(ctx, make_pdf(tmp_path / "q.pdf", ["Alpha.", "Beta."]))
    process(ctx, doc_id)
    result = reader.ask(ctx, "Which page says Beta?", "default")
    assert result.pages == 2 and result.left_out == 0 and sum(result.tiers.values()) == 2
    assert all(c.document_id == doc_id and c.page in (1, 2) for c in result.citations)
    assert reader.read_page(ctx, doc_id, 2, "text").startswith("Beta.")
    assert isinstance(reader.read_page(ctx, doc_id, 2, "gist"), str)
    with pytest.raises(ValueError, match="unknown tier"):
        reader.read_page(ctx, doc_id, 2, "huge")
    with pytest.raises(reader.EmptyCollection):
        reader.ask(ctx, "?", "nothing-here")


def test_torch_threads_setting_applies_when_the_model_loads(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        c = Context(Settings(data_dir=tmp_path / "d", torch_threads=1))
        assert torch.get_num_threads() == 2  # nothing happens until the model is needed
        c.backend  # noqa: B018
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_workers_default_threads_give_way_to_the_setting(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        c = Context(Settings(data_dir=tmp_path / "d"), default_threads=1)  # as a worker
        c.backend  # noqa: B018
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        c = Context(Settings(data_dir=tmp_path / "e", torch_threads=2), default_threads=1)
        c.backend  # noqa: B018
        assert torch.get_num_threads() == 2  # KB_TORCH_THREADS wins
    finally:
        torch.set_num_threads(before)


def test_a_failed_tensor_write_leaves_the_pages_to_encode_again(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Tensors are written by a thread while the model goes on: a write that fails still fails
    the chunk, and no page of it is marked encoded, so the task's retry encodes them again."""
    pdf = make_pdf(tmp_path / "two.pdf", ["Write failure one.", "Write failure two."])
    doc_id = upload(ctx, pdf)
    chunks: list[list[int]] = []
    pipeline.render_document(ctx, doc_id, on_chunk=chunks.append)
    real_put = ctx.tensors.put
    calls = []

    def failing_put(version: str, tier: str, page_hash: str, tensors: object) -> None:
        calls.append(tier)
        if len(calls) == 3:
            raise ConnectionError("the store went away")
        real_put(version, tier, page_hash, tensors)  # type: ignore[arg-type]

    monkeypatch.setattr(ctx.tensors, "put", failing_put)
    with pytest.raises(ConnectionError):
        pipeline.encode_pages(ctx, doc_id, chunks[0])
    with ctx.session() as s:
        assert [p.encoded_version for p in repo.get_document(s, doc_id).pages] == [None, None]
    monkeypatch.setattr(ctx.tensors, "put", real_put)
    with caplog.at_level("INFO", logger="kb.pipeline"):
        assert pipeline.encode_pages(ctx, doc_id, chunks[0]) == (2, 2)
    stages = next(r.getMessage() for r in caplog.records if "encode stages" in r.getMessage())
    assert "pages=2" in stages and "put_wait=" in stages, stages


def test_a_scan_gets_its_text_tier_by_ocr(ctx: Context, tmp_path: Path) -> None:
    ocr = ctx._ocr = CountingReader()  # the real engine, counting (ctx.ocr loads it otherwise)
    scan = upload(ctx, make_scan(tmp_path / "scan.png", LINES))
    typed = upload(ctx, make_pdf(tmp_path / "typed.pdf", ["The Lisbon office employs 37."]))
    blank = tmp_path / "blank.png"
    Image.new("RGB", (1240, 1754), "white").save(blank)
    empty = upload(ctx, blank)
    for doc_id in (scan, typed, empty):
        process(ctx, doc_id)
    assert ocr.pages == 2  # the scan and the blank image; never the PDF's text page
    version = ctx.backend.version
    with ctx.session() as s:
        pages = {d: repo.get_document(s, d).pages[0] for d in (scan, typed, empty)}  # type: ignore[union-attr]
        assert {d: repo.get_document(s, d).status for d in pages} == dict.fromkeys(pages, "ready")  # type: ignore[union-attr]
    read = pages[scan]
    assert read.text_source == "ocr" and [w for w in WORDS if w not in read.text] == []
    assert ctx.tensors.exists(version, TEXT, read.content_hash)  # the text tier is encoded
    assert reader.read_page(ctx, scan, 1, TEXT) == read.text
    assert pages[typed].text_source == "text_layer"
    assert pages[typed].text.strip() == "The Lisbon office employs 37."
    assert (pages[empty].text, pages[empty].text_source) == ("", "ocr")
    assert not ctx.tensors.exists(version, TEXT, pages[empty].content_hash)


def test_ocr_off_leaves_scans_without_text(tmp_path: Path) -> None:
    ctx = Context(Settings(data_dir=tmp_path / "data", ocr="off"))
    ctx._backend = CountingBackend()
    assert ctx.ocr is None
    doc_id = upload(ctx, make_scan(tmp_path / "scan.png", LINES))
    process(ctx, doc_id)
    with ctx.session() as s:
        page = repo.get_document(s, doc_id).pages[0]  # type: ignore[union-attr]
        assert (page.text, page.text_source) == ("", "text_layer")


# -- a render that runs out of its budget continues in a new task, from the pages stored


@pytest.fixture(params=["embedded", "postgres"])
def budgeted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Context]:
    """A context whose render budget is spent after its first chunk of 2 pages: SQLite, or a
    PostgreSQL database of its own (concurrent page upserts there are real ones)."""
    settings = Settings(data_dir=tmp_path / "data", render_chunk_pages=2, render_budget_s=0)
    admin_url, url = None, None
    if request.param == "postgres":
        admin_url = request.getfixturevalue("postgres_admin_url")
        url = create_database(admin_url)
        settings = settings.model_copy(update={"database_url": url})
    c = Context(settings)
    c._backend = CountingBackend()
    try:
        yield c
    finally:
        c.close()
        if admin_url is not None and url is not None:
            drop_database(admin_url, url)


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The numbers of the pages rendered (ingest.render.render_page), in order."""
    numbers: list[int] = []
    real = ingest_render.render_page

    def counting(doc, number, ocr=None):  # type: ignore[no-untyped-def]
        numbers.append(number)
        return real(doc, number, ocr)

    monkeypatch.setattr(ingest_render, "render_page", counting)
    return numbers


SIX = [f"Page {i} of six, different from the others." for i in range(1, 7)]


def rows(ctx: Context, doc_id: str) -> list[tuple[int, int, str]]:
    """(number, row id, content hash) of every page row of the document, by number."""
    with ctx.session() as s:
        stmt = select(Page.number, Page.id, Page.content_hash).where(Page.document_id == doc_id)
        return sorted((n, i, h) for n, i, h in s.execute(stmt))


def test_a_render_out_of_budget_continues_where_it_stopped(
    budgeted: Context, rendered: list[int], tmp_path: Path
) -> None:
    ctx = budgeted
    doc_id = upload(ctx, make_pdf(tmp_path / "six.pdf", SIX))
    sent: list[list[int]] = []
    parts: list[pipeline.RenderResult] = []
    sent_through = 0
    while True:  # what workers.tasks does: each part's next_page is a new render task
        parts.append(
            pipeline.render_document(ctx, doc_id, on_chunk=sent.append, sent_through=sent_through)
        )
        for numbers in parts[-1].chunks:  # its encodes run meanwhile
            pipeline.encode_pages(ctx, doc_id, numbers)
        if parts[-1].next_page is None:
            break
        sent_through = parts[-1].next_page - 1
        with ctx.session() as s:  # mid-way: processing, the total known, progress exact
            doc = repo.get_document(s, doc_id)
            assert doc is not None
            assert (doc.status, doc.pages_total, doc.pages_done) == ("processing", 6, sent_through)

    assert [p.next_page for p in parts] == [3, 5, None]
    assert [p.chunks for p in parts] == [[[1, 2]], [[3, 4]], [[5, 6]]]
    assert rendered == [1, 2, 3, 4, 5, 6]  # each page once
    assert sent == [[1, 2], [3, 4], [5, 6]]  # each encode sent once
    assert [n for n, _, _ in rows(ctx, doc_id)] == [1, 2, 3, 4, 5, 6]
    with ctx.session() as s:
        doc = repo.get_document(s, doc_id)
        assert doc is not None
        assert (doc.status, doc.pages_total, doc.pages_done) == ("ready", 6, 6)
        assert "Page 5 of six" in doc.pages[4].text
    assert len(list(ctx.store.list(PAGE_IMAGES))) == 6
    assert len(ctx.backend.encoded) == 6 * len(ctx.backend.tier_tokens)  # type: ignore[attr-defined]


def test_a_redriven_render_resumes_after_the_pages_stored(
    budgeted: Context, rendered: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two parts ran (pages 1-4); the encode of pages 3-4 and the third part were lost (a
    broker restarted without its queue). The sweep's render (sent_through 0) renders only
    pages 5-6, sends the lost encode again without rendering its pages, and the document ends
    ready with exactly its pages, nothing encoded twice."""
    ctx = budgeted
    doc_id = upload(ctx, make_pdf(tmp_path / "six.pdf", SIX))
    first = pipeline.render_document(ctx, doc_id)
    pipeline.encode_pages(ctx, doc_id, first.chunks[0])
    second = pipeline.render_document(ctx, doc_id, sent_through=2)
    assert (first.next_page, second.next_page, second.chunks) == (3, 5, [[3, 4]])
    before = rows(ctx, doc_id)
    assert [n for n, _, _ in before] == [1, 2, 3, 4]
    written: list[str] = []
    put = ctx.store.put
    monkeypatch.setattr(ctx.store, "put", lambda key, *a: (written.append(key), put(key, *a)))
    rendered.clear()

    ctx.settings.render_budget_s = 240  # the rest fits in one task now
    sent: list[list[int]] = []
    redriven = pipeline.render_document(ctx, doc_id, on_chunk=sent.append)
    assert rendered == [5, 6]
    assert sent == redriven.chunks == [[3, 4], [5, 6]] and redriven.next_page is None
    after = rows(ctx, doc_id)
    assert after[:4] == before  # the same rows, the same contents
    assert written == [page_image_key(h) for n, _, h in after if n in (5, 6)]
    for numbers in sent:
        pipeline.encode_pages(ctx, doc_id, numbers)
    with ctx.session() as s:
        doc = repo.get_document(s, doc_id)
        assert doc is not None
        assert (doc.status, doc.pages_total, doc.pages_done) == ("ready", 6, 6)
    assert [n for n, _, _ in rows(ctx, doc_id)] == [1, 2, 3, 4, 5, 6]
    assert len(ctx.backend.encoded) == 6 * len(ctx.backend.tier_tokens)  # type: ignore[attr-defined]


def test_two_deliveries_rendering_at_once_store_each_page_once(
    budgeted: Context, tmp_path: Path
) -> None:
    """A render delivered twice (Redis restored its message while it still ran): the second
    starts before the first stored anything, so both render pages 3-6; the pages are upserted
    by (document, number), so each is one row, and the document ends ready, counted exactly."""
    ctx = budgeted
    ctx.settings.render_budget_s = 240
    doc_id = upload(ctx, make_pdf(tmp_path / "six.pdf", SIX))
    other: list[pipeline.RenderResult] = []

    def first_chunk_stored(numbers: list[int]) -> None:
        if not other:  # the other delivery runs whole now, resuming after page 2
            other.append(pipeline.render_document(ctx, doc_id))

    mine = pipeline.render_document(ctx, doc_id, on_chunk=first_chunk_stored)
    assert mine.chunks == [[1, 2], [3, 4], [5, 6]]
    # The other did not render pages 1-2; not knowing whether their encode was sent (its
    # sent_through is 0), it sent it again, which encodes nothing twice.
    assert other[0].chunks == [[1, 2], [3, 4], [5, 6]]
    assert [n for n, _, _ in rows(ctx, doc_id)] == [1, 2, 3, 4, 5, 6]
    for numbers in mine.chunks + other[0].chunks:
        pipeline.encode_pages(ctx, doc_id, numbers)
    assert len(ctx.backend.encoded) == 6 * len(ctx.backend.tier_tokens)  # type: ignore[attr-defined]
    with ctx.session() as s:
        doc = repo.get_document(s, doc_id)
        assert doc is not None
        assert (doc.status, doc.pages_total, doc.pages_done) == ("ready", 6, 6)


def test_a_render_with_nothing_left_makes_a_fully_encoded_document_ready(
    budgeted: Context, tmp_path: Path
) -> None:
    """Every page stored and encoded, yet the document processing (a re-driven render moved it
    back while the last encode marked it ready): the next render renders and sends nothing, and
    marks it ready."""
    ctx = budgeted
    ctx.settings.render_budget_s = 240
    doc_id = upload(ctx, make_pdf(tmp_path / "two.pdf", SIX[:2]))
    process(ctx, doc_id)
    with ctx.session() as s:
        repo.set_status(s, doc_id, "processing")
    again = pipeline.render_document(ctx, doc_id)
    assert (again.chunks, again.next_page, again.failed) == ([], None, False)
    with ctx.session() as s:
        assert repo.get_document(s, doc_id).status == "ready"  # type: ignore[union-attr]


def test_stored_through_is_the_run_from_page_one() -> None:
    assert pipeline.stored_through([]) == 0
    assert pipeline.stored_through([2, 3]) == 0
    assert pipeline.stored_through([1, 2, 3, 5, 6]) == 3
