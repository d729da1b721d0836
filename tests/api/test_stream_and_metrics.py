"""Streamed answers and /metrics on the whole stack as `make run` starts it (an embedded Redis,
a Celery worker process, the API under uvicorn), over HTTP: server-sent events read by a parser
of their own (httpx-sse), metrics by prometheus-client's parser of the text format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx_sse
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import ADMIN_KEY, Stack, make_pdf, wait_document, wait_for

pytestmark = pytest.mark.slow

LISBON = {"question": "How many engineers work in Lisbon?"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("stream") / "data").start()
    try:
        yield stack
    finally:
        assert stack.stop() == 0, stack.log()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(admin: httpx.Client) -> Samples:
    r = admin.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def ask_streamed(c: httpx.Client, body: dict) -> list[tuple[str, str]]:
    with httpx_sse.connect_sse(c, "POST", "/v1/ask", json={**body, "stream": True}) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert source.response.headers["cache-control"] == "no-cache"
        return [(event.event, event.data) for event in source.iter_sse()]


def test_metrics_move_after_an_upload_and_an_ask(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as c, stack.client(ADMIN_KEY) as admin:
        assert httpx.get(f"{stack.url}/metrics").status_code == 401
        assert c.get("/metrics").status_code == 403  # the admin key's, as Prometheus sends it
        before = scrape(admin)
        pdf = make_pdf(
            tmp_path / "report.pdf",
            ["Revenue in Q3 was 4.2 million euros.", "The Lisbon office employs 37 engineers."],
        )
        r = c.post("/v1/documents", files={"file": ("report.pdf", pdf.read_bytes())})
        assert r.status_code == 202, r.text
        assert wait_document(c, r.json()["id"])["status"] == "ready", stack.log()
        now: Samples = {}

        def moved(metric: str, /, **labels: str) -> float:
            return value(now, metric, **labels) - value(before, metric, **labels)

        def encoded() -> bool:  # recorded by the worker just after it marks the document ready
            nonlocal now
            now = scrape(admin)
            return moved("kb_task_seconds_count", task="ingest.encode") >= 1

        wait_for(encoded, "the encode task's metrics", timeout=30)
        assert moved("kb_uploads_total", result="new") == 1
        assert moved("kb_uploads_total", result="duplicate") == 0
        assert moved("kb_pages_rendered_total") == 2
        assert moved("kb_pages_encoded_total") == 2
        assert moved("kb_task_seconds_count", task="ingest.render") == 1
        assert moved("kb_task_seconds_sum", task="ingest.render") > 0
        assert value(now, "kb_task_seconds_bucket", task="ingest.render", le="+Inf") == value(
            now, "kb_task_seconds_count", task="ingest.render"
        )
        assert moved("kb_task_failures_total", task="ingest.render") == 0
        assert value(now, "kb_workers_alive") == 1
        assert value(now, "kb_queue_depth") >= 0 and ("kb_queue_depth", frozenset()) in now

        # A duplicate upload counts as one, without rendering anything again.
        r = c.post("/v1/documents", files={"file": ("report.pdf", pdf.read_bytes())})
        assert r.status_code == 200 and r.json()["duplicate"]
        answer = c.post("/v1/ask", json=LISBON).json()
        ask_streamed(c, LISBON)
        after = scrape(admin)
        assert value(after, "kb_uploads_total", result="duplicate") == 1 + value(
            before, "kb_uploads_total", result="duplicate"
        )
        assert value(after, "kb_pages_rendered_total") == value(now, "kb_pages_rendered_total")
        assert value(after, "kb_ask_seconds_count") - value(now, "kb_ask_seconds_count") == 2
        assert value(after, "kb_ask_seconds_sum") > value(now, "kb_ask_seconds_sum")
        tokens = value(after, "kb_ask_context_tokens_sum") - value(now, "kb_ask_context_tokens_sum")
        assert tokens == 2 * answer["context"]["tokens"] > 0

        model = admin.get("/healthz").json()["model"]
        labels = {"name": "reference", "version": model["version"]}
        labels["trained"] = str(model["trained"]).lower()
        assert value(after, "kb_model_info", **labels) == 1


def test_the_streamed_answer_ends_with_the_answer_the_json_form_gives(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.client() as c:
        pdf = make_pdf(tmp_path / "lisbon.pdf", ["The Lisbon office employs 37 engineers."])
        r = c.post(
            "/v1/documents",
            files={"file": ("lisbon.pdf", pdf.read_bytes())},
            data={"collection": "streamed"},
        )
        assert wait_document(c, r.json()["id"])["status"] == "ready", stack.log()
        for question in (LISBON["question"], "Who signed the lease?"):
            body = {"question": question, "collection": "streamed"}
            plain = c.post("/v1/ask", json=body)
            assert plain.status_code == 200 and plain.headers["content-type"] == (
                "application/json"
            )
            events = ask_streamed(c, body)
            kinds = [kind for kind, _ in events]
            assert kinds[-1] == "final" and set(kinds[:-1]) == {"piece"} and len(kinds) > 1
            final = json.loads(events[-1][1])
            assert final == plain.json()
            assert "".join(json.loads(data)["text"] for _, data in events[:-1]) == final["answer"]

        # Every error comes before the stream starts, with its status code and a JSON body.
        for body, code in (
            ({"question": "?", "collection": "nothing-here"}, 404),
            ({"question": "?", "collection": "streamed", "max_context_tokens": 10**6}, 422),
            ({"question": "", "collection": "streamed"}, 422),
        ):
            r = c.post("/v1/ask", json={**body, "stream": True})
            assert r.status_code == code and "detail" in r.json(), r.text
    r = httpx.post(f"{stack.url}/v1/ask", json={**LISBON, "stream": True})
    assert r.status_code == 401 and "detail" in r.json()
