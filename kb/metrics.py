"""What the service measures, in one place: every metric's name, help, labels and buckets.

Two kinds of process record them. The API process counts uploads and times questions in
prometheus-client metrics of its own (``UPLOADS``, ``ASK_SECONDS``, ``ASK_CONTEXT_TOKENS``).
Celery workers are other processes (prefork children, recycled every 200 tasks, on other
machines too: the GPU worker): they add to counters and histograms kept in one Redis hash
(``WorkerMetrics``), which the API reads when /metrics is scraped (``exposition``). Why Redis
and not prometheus-client's multiprocess mode: docs/architecture.md, "Metrics".
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# --- the API process ---

UPLOADS = Counter(
    "kb_uploads",
    "Uploads accepted, by result: new (a new document queued), duplicate (the same bytes were "
    "already in the collection), restarted (a failed or stalled document queued again)",
    ["result"],
)
# A question over 1,000 pages takes about a second on two CPU cores (docs/benchmarks.md).
ASK_SECONDS = Histogram(
    "kb_ask_seconds",
    "Time to answer a question, from reading the catalog to the answer (streamed or not)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
# Up to the reference model's 65,536-token budget, and a larger model's.
ASK_CONTEXT_TOKENS = Histogram(
    "kb_ask_context_tokens",
    "Context tokens packed into one question's memory",
    buckets=(256, 1024, 4096, 8192, 16384, 32768, 65536, 131072, 262144),
)


# --- the workers, kept in Redis ---

KEY = "kb:metrics"  # one Redis hash: field = name + labels as JSON, value = a float


@dataclass(frozen=True)
class WorkerMetric:
    name: str  # a counter's samples get "_total" in the exposition
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # given: a histogram (+Inf is added)


PAGES_RENDERED = WorkerMetric(
    "kb_pages_rendered",
    "Pages rendered to an image and stored by the workers (a redelivered chunk counts again)",
)
PAGES_ENCODED = WorkerMetric(
    "kb_pages_encoded",
    "Pages of finished encode tasks: their tensors are stored at every tier",
)
# From a chunk's encode (seconds) to a whole document's render (up to the 600 s hard limit).
TASK_SECONDS = WorkerMetric(
    "kb_task_seconds",
    "How long worker tasks ran, by task name",
    ("task",),
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
TASK_FAILURES = WorkerMetric(
    "kb_task_failures",
    "Worker tasks that ended with an error (retries spent, an unexpected error, the hard "
    "time limit), by task name",
    ("task",),
)
TASK_RETRIES = WorkerMetric(
    "kb_task_retries", "Worker tasks retried after a transient error, by task name", ("task",)
)
WORKER_METRICS = (PAGES_RENDERED, PAGES_ENCODED, TASK_SECONDS, TASK_FAILURES, TASK_RETRIES)


def _field(name: str, labels: dict[str, str]) -> str:
    return f"{name} {json.dumps(labels, sort_keys=True)}"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class WorkerMetrics:
    """Counters and histograms of every worker process, added up in Redis.

    Each record is one HINCRBYFLOAT (a histogram observation two, pipelined): atomic across
    processes and machines, and nothing is lost when a pool process is recycled. Recording
    never fails a task: while Redis is away the record is dropped (and logged).
    """

    def __init__(self, client: redis.Redis):
        self.client = client

    def add(self, metric: WorkerMetric, amount: float = 1.0, **labels: str) -> None:
        self._write([(_field(metric.name, labels), amount)])

    def observe(self, metric: WorkerMetric, value: float, **labels: str) -> None:
        bound = next((b for b in metric.buckets if value <= b), math.inf)
        self._write(
            [
                (_field(metric.name + "_bucket", {**labels, "le": _le(bound)}), 1.0),
                (_field(metric.name + "_sum", labels), value),
            ]
        )

    def _write(self, increments: list[tuple[str, float]]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for field, amount in increments:
                pipe.hincrbyfloat(KEY, field, amount)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("a worker metric was not recorded (Redis: %s)", exc)

    def families(self) -> list[Metric]:
        """Every worker metric as it stands, ready for the exposition (raises redis.RedisError
        when Redis does not answer)."""
        values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for raw_field, raw_value in self.client.hgetall(KEY).items():
            text = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
            name, _, labels = text.partition(" ")
            key = tuple(sorted(json.loads(labels).items()))
            values.setdefault(name, {})[key] = float(raw_value)
        return [_family(m, values) for m in WORKER_METRICS]


def _family(
    metric: WorkerMetric, values: dict[str, dict[tuple[tuple[str, str], ...], float]]
) -> Metric:
    if not metric.buckets:
        counter = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
        for key, value in sorted(values.get(metric.name, {}).items()):
            counter.add_metric([dict(key)[label] for label in metric.labels], value)
        return counter
    histogram = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
    bounds = [_le(b) for b in (*metric.buckets, math.inf)]
    series: dict[tuple[str, ...], dict[str, float]] = {}  # label values -> le -> count
    for key, count in values.get(metric.name + "_bucket", {}).items():
        labels = dict(key)
        le = labels.pop("le")
        series.setdefault(tuple(labels[label] for label in metric.labels), {})[le] = count
    sums = values.get(metric.name + "_sum", {})
    for label_values, counts in sorted(series.items()):
        cumulative, buckets = 0.0, []
        for le in bounds:
            cumulative += counts.get(le, 0.0)
            buckets.append((le, cumulative))
        total = sums.get(tuple(sorted(zip(metric.labels, label_values, strict=True))), 0.0)
        histogram.add_metric(list(label_values), buckets, total)
    return histogram


# --- scrape time ---


def model_info(name: str, version: str, trained: bool) -> Metric:
    info = GaugeMetricFamily(
        "kb_model_info",
        "The model the API answers with (its version is part of every tensor key); always 1",
        labels=["name", "version", "trained"],
    )
    info.add_metric([name, version, str(trained).lower()], 1)
    return info


def queue_depth(depth: int) -> Metric:
    return GaugeMetricFamily("kb_queue_depth", "Tasks waiting in the broker's queue", depth)


def workers_alive(alive: int) -> Metric:
    return GaugeMetricFamily(
        "kb_workers_alive",
        "Workers heard from within KB_WORKER_ALIVE_S seconds (their heartbeat in Redis)",
        alive,
    )


class _Snapshot(Collector):
    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format: this process's metrics (the API's, and prometheus-client's
    process and Python collectors) followed by ``families`` read at scrape time."""
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(_Snapshot(families))
    return generate_latest(REGISTRY) + generate_latest(scraped)
