"""lab.bench_ingest's reading of the worker's stage lines (the whole run starts the service:
`python -m lab.bench_ingest`, docs/benchmarks.md)."""

from __future__ import annotations

import logging

import pytest

from kb.pipeline import Stages
from lab.bench_ingest import stage_seconds


def test_the_stage_lines_the_pipeline_logs_are_summed(caplog: pytest.LogCaptureFixture) -> None:
    stages = Stages()
    with stages("base"):
        pass
    assert list(stages.seconds) == ["base"] and stages.seconds["base"] >= 0
    stages.seconds = {"text": 1.25, "base": 2.0}  # fixed figures for the sum below
    log = logging.getLogger("kb.pipeline")
    with caplog.at_level("INFO", logger="kb.pipeline"):
        log.info("encode stages: pages=%d %s", 16, stages)
        log.info("encode stages: pages=%d %s", 4, stages)
    text = "\n".join(f"[2026-11-30 03:00:00: INFO/ForkPoolWorker-1] {r.getMessage()}"
                     for r in caplog.records)  # fmt: skip
    assert stage_seconds(text + "\nsomething else") == {"pages": 20.0, "text": 2.5, "base": 4.0}
