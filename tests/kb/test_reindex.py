"""One model version, in the catalog (issue 11 point 4), in-process on real components (SQLite,
the local store, two different sets of reference-model weights at a tiny size): an API process
running one version and a worker running another share one catalog and one store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kb import jobs, pipeline, reader, serving
from kb.catalog import repo
from kb.context import Context
from kb.keys import TENSORS
from kb.model.reference.backend import ReferenceBackend
from kb.settings import Settings
from tests.kb.model.reference.conftest import tiny_config
from tests.kb.test_pipeline import process, upload
from tests.queues import RecordingQueue
from tests.stack import make_pdf

PAGES = 5  # across two documents: 3 + 2


def context(data_dir: Path, backend: ReferenceBackend) -> Context:
    c = Context(Settings(_env_file=None, data_dir=data_dir, render_chunk_pages=2))  # type: ignore[call-arg]
    c._backend = backend
    return c


@pytest.fixture
def old(tmp_path: Path) -> Iterator[Context]:
    """The API (and, at first, the workers): the weights the catalog serves."""
    c = context(tmp_path / "data", ReferenceBackend(config=tiny_config()))
    yield c
    c.close()


@pytest.fixture
def new(tmp_path: Path) -> Iterator[Context]:
    """A worker started with other weights: a wider model, whose tensors the old one cannot read."""
    c = context(tmp_path / "data", ReferenceBackend(config=tiny_config(d_model=48)))
    yield c
    c.close()


@pytest.fixture
def corpus(old: Context, tmp_path: Path) -> list[str]:
    """Two documents ingested by a worker running the serving version."""
    assert serving.claim(old) == old.backend.version
    ids = [
        upload(old, make_pdf(tmp_path / "a.pdf", ["Alpha one.", "Alpha two.", "Alpha three."])),
        upload(old, make_pdf(tmp_path / "b.pdf", ["The warehouse is in Rotterdam.", "Beta."])),
    ]
    for doc_id in ids:
        process(old, doc_id)
    return ids


def versions(ctx: Context) -> dict[str, int]:
    """Pages per encoded version, over the catalog."""
    with ctx.session() as s:
        counts: dict[str, int] = {}
        for p in repo.pages_of_collection(s, None):
            counts[str(p.encoded_version)] = counts.get(str(p.encoded_version), 0) + 1
        return counts


def stored_versions(ctx: Context) -> set[str]:
    return {k.split("/")[1] for k in ctx.store.list(TENSORS)}


def job_state(ctx: Context, job_id: str) -> tuple[str, int, int]:
    with ctx.session() as s:
        job = repo.get_job(s, job_id)
        assert job is not None
        return job.status, job.done, job.total


def test_reindex_to_other_weights_while_questions_keep_being_answered(
    old: Context, new: Context, corpus: list[str], tmp_path: Path
) -> None:
    a, b = old.backend.version, new.backend.version
    assert a != b
    queue = RecordingQueue()
    started = jobs.start_reindex(old, queue, None, model_version=b)
    assert started.created and queue.sent == [("admin.reindex", started.job_id)]
    job = started.job_id
    # The same request again is the same job, not a second one.
    assert jobs.start_reindex(old, queue, None, model_version=b) == jobs.Started(job, False)
    assert len(queue.sent) == 1
    # The catalog serves one version: another one is for every collection at once.
    with pytest.raises(jobs.WholeCatalogOnly):
        jobs.start_reindex(old, queue, "default", model_version=b)

    batches = pipeline.reindex_plan(new, job, batch_size=2)
    assert sorted(len(batch) for batch in batches) == [1, 2, 2]
    assert job_state(new, job) == ("running", 0, PAGES)

    # Questions are answered from the old version's tensors, by the old model, all through
    # the re-encoding, while the new worker writes the new ones beside them.
    answers: list[reader.AskResult] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def ask_meanwhile() -> None:
        while not stop.is_set():
            try:
                answers.append(reader.ask(old, "Where is the warehouse?"))
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    asker = threading.Thread(target=ask_meanwhile)
    asker.start()
    try:
        assert pipeline.reindex_pages(new, job, batches[0]) == (2, PAGES)
        assert pipeline.reindex_pages(new, job, batches[0]) == (2, PAGES)  # redelivered: once
        assert pipeline.reindex_pages(new, job, batches[1]) == (4, PAGES)
        # A document uploaded meanwhile is encoded by the new worker: the old model cannot
        # read it, so its page is counted, not packed.
        late = upload(new, make_pdf(tmp_path / "late.pdf", ["Gamma."]))
        process(new, late)
    finally:
        stop.set()
        asker.join()
    assert not errors, errors
    assert answers, "no question was answered while the job ran"
    for answer in answers:
        assert (answer.model_version, answer.pages, answer.left_out) == (a, PAGES, 0)
        assert answer.other_version in (0, 1)  # 1 once the late page was encoded
    during = reader.ask(old, "Where is the warehouse?")
    assert (during.pages, during.other_version) == (PAGES, 1)
    assert job_state(old, job) == ("running", 4, PAGES)  # never done before the switch
    assert versions(old) == {a: PAGES, b: 1}

    assert pipeline.reindex_pages(new, job, batches[2]) == (PAGES, PAGES)
    assert job_state(old, job) == ("done", PAGES, PAGES)
    assert versions(old) == {b: PAGES + 1}  # switched together
    with old.session() as s:
        assert repo.serving_version(s) == b
    assert stored_versions(old) == {b}  # the superseded tensors are collected

    # The old API now says what is wrong instead of feeding new tensors to the old model.
    assert serving.mismatch(old) is not None and b in str(serving.mismatch(old))
    with pytest.raises(reader.OtherModelVersion, match=b):
        reader.ask(old, "Where is the warehouse?")
    with pytest.raises(reader.PageNotReady, match=b):
        reader.read_page(old, corpus[0], 1, "gist")
    # Restarted with the new weights, it answers from every page.
    assert serving.mismatch(new) is None
    after = reader.ask(new, "Where is the warehouse?")
    assert (after.model_version, after.pages, after.other_version) == (b, PAGES + 1, 0)
    assert isinstance(reader.read_page(new, corpus[0], 1, "gist"), str)


def test_a_worker_running_another_version_refuses_the_job(
    old: Context, new: Context, corpus: list[str]
) -> None:
    started = jobs.start_reindex(old, RecordingQueue(), None, model_version=new.backend.version)
    assert pipeline.reindex_plan(old, started.job_id, batch_size=2) == []
    with old.session() as s:
        job = repo.get_job(s, started.job_id)
        assert job is not None and job.status == "failed"
        assert job.error == (
            f"a worker running model version {old.backend.version} took this job, which "
            f"re-encodes for {new.backend.version}: start the workers with the weights of "
            f"{new.backend.version} (KB_MODEL_PATH) and reindex again"
        )
    assert versions(old) == {old.backend.version: PAGES}
    # A batch of a job already planned is refused the same way.
    again = jobs.start_reindex(old, RecordingQueue(), None, model_version=new.backend.version)
    batches = pipeline.reindex_plan(new, again.job_id, batch_size=2)
    assert pipeline.reindex_pages(old, again.job_id, batches[0]) is None
    assert job_state(old, again.job_id)[0] == "failed"
    assert stored_versions(old) == {old.backend.version}


def test_cancelling_a_job_keeps_the_pages_and_removes_its_tensors(
    old: Context, new: Context, corpus: list[str]
) -> None:
    a, b = old.backend.version, new.backend.version
    job = jobs.start_reindex(old, RecordingQueue(), None, model_version=b).job_id
    batches = pipeline.reindex_plan(new, job, batch_size=2)
    pipeline.reindex_pages(new, job, batches[0])
    assert stored_versions(old) == {a, b}

    jobs.cancel(old, job)
    assert job_state(old, job) == ("cancelled", 2, PAGES)
    assert stored_versions(old) == {a}
    # A batch that was already queued does nothing; nothing switches.
    assert pipeline.reindex_pages(new, job, batches[1]) is None
    assert pipeline.reindex_plan(new, job, batch_size=2) == []
    assert stored_versions(old) == {a} and versions(old) == {a: PAGES}
    assert reader.ask(old, "Where is the warehouse?").pages == PAGES
    with pytest.raises(jobs.JobFinished, match="already cancelled"):
        jobs.cancel(old, job)
    with pytest.raises(jobs.JobNotFound):
        jobs.cancel(old, "00000000-0000-4000-8000-000000000000")
    # Cancelled is finished: the same reindex can be started again, as a new job.
    again = jobs.start_reindex(old, RecordingQueue(), None, model_version=b)
    assert again.created and again.job_id != job


def test_a_job_stopped_mid_way_resumes_with_the_pages_not_done(
    old: Context, corpus: list[str]
) -> None:
    """The same version (the default): the sweep sent the job again after its worker stopped
    between two batches; the pages done are not re-encoded, the count is exact."""
    job = jobs.start_reindex(old, RecordingQueue(), None).job_id
    first = pipeline.reindex_plan(old, job, batch_size=2)
    pipeline.reindex_pages(old, job, first[0])
    # Stopped here: the other batches' messages are lost.
    resumed = pipeline.reindex_plan(old, job, batch_size=2)
    assert sorted(map(len, resumed)) == [1, 2]
    assert set(sum(resumed, [])) == set(sum(first[1:], []))
    assert job_state(old, job) == ("running", 2, PAGES)
    for batch in resumed:
        pipeline.reindex_pages(old, job, batch)
    assert job_state(old, job) == ("done", PAGES, PAGES)
    assert versions(old) == {old.backend.version: PAGES}
    assert pipeline.reindex_plan(old, job, batch_size=2) == []  # a late delivery: nothing
    assert job_state(old, job) == ("done", PAGES, PAGES)
