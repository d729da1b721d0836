"""A streamed answer that really comes piece by piece: the app in-process (TestClient) over a
reference model whose weights have no copy path, so it decodes the answer byte by byte, with
the real catalog and store; the worker's part (render, encode) run in-process as the tasks run
it. The whole stack's streaming (uvicorn, the shipped model): test_stream_and_metrics.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx_sse
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from kb import pipeline
from kb.model.reference.backend import random_model, save_weights
from kb.settings import Settings
from tests.kb.model.reference.conftest import tiny_config
from tests.queues import RecordingQueue
from tests.stack import ADMIN_KEY, API_KEY, make_pdf

USER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("streaming")
    config = tiny_config(span_head=False)
    weights = save_weights(random_model(config, seed=2), config, folder / "reference.safetensors")
    assert weights
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=folder / "data",
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
        model_path=folder / "reference.safetensors",
    )
    queue = RecordingQueue()
    with TestClient(create_app(settings, queue=queue)) as c:
        pdf = make_pdf(folder / "a.pdf", ["The Lisbon office employs 37 engineers."])
        r = c.post("/v1/documents", headers=USER, files={"file": ("a.pdf", pdf.read_bytes())})
        assert r.status_code == 202, r.text
        ctx = c.app.state.ctx  # type: ignore[attr-defined]
        for doc_id in queue.renders():  # what the worker's tasks do
            chunks: list[list[int]] = []
            pipeline.render_document(ctx, doc_id, on_chunk=chunks.append)
            for numbers in chunks:
                pipeline.encode_pages(ctx, doc_id, numbers)
        yield c


def test_pieces_arrive_as_the_decoder_makes_them_then_the_whole_answer(
    client: TestClient,
) -> None:
    body = {"question": "How many engineers work in Lisbon?"}
    plain = client.post("/v1/ask", headers=USER, json=body)
    assert plain.status_code == 200, plain.text
    stream_body = {**body, "stream": True}
    with httpx_sse.connect_sse(client, "POST", "/v1/ask", headers=USER, json=stream_body) as s:
        assert s.response.headers["content-type"].startswith("text/event-stream")
        events = [(e.event, e.data) for e in s.iter_sse()]
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "final" and set(kinds[:-1]) == {"piece"}
    assert len(kinds) > 2  # the byte decoder: a piece per character it generated
    final = json.loads(events[-1][1])
    assert final == plain.json()
    streamed = "".join(json.loads(data)["text"] for _, data in events[:-1])
    # what was generated; the answer may have had a repetition loop cut from its end
    assert streamed.startswith(final["answer"]) and final["answer"]


def test_the_model_is_released_when_a_stream_ends(client: TestClient) -> None:
    """The stream holds the model lock in its own thread and lets go at its end: questions
    after it, streamed or not, are answered (a lock left held would hang them)."""
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    body = {"question": "Where?", "stream": True}
    for _ in range(3):
        with httpx_sse.connect_sse(client, "POST", "/v1/ask", headers=USER, json=body) as s:
            assert [e.event for e in s.iter_sse()][-1] == "final"
        assert ctx.model_lock.acquire(timeout=10)
        ctx.model_lock.release()
    assert client.post("/v1/ask", headers=USER, json={"question": "Where?"}).status_code == 200
