"""Ingest end to end, as a user sees it: ``python -m lab.bench_ingest``.

Starts the whole service the way ``make run`` (and tests/stack.py) starts it, ``python -m
kb.cli run``: Redis, the migrations, a Celery worker and the API, on a temporary data directory
(an embedded Redis, SQLite and a local object store, unless KB_REDIS_URL, KB_DATABASE_URL and
KB_S3_* are set in the environment: then those servers). Uploads an N-page text PDF through the
HTTP API and times from the upload's first byte to the document ``ready``: every page rendered,
encoded at every tier (text, base, small, tiny, gist), stored and catalogued.

Per stage: the worker logs each encode chunk's stage times (kb.pipeline, "encode stages"), which
are summed here, beside the render and encode tasks' seconds from ``/metrics``.

A warm-up document (2 pages) goes first, so the figure is the service's steady pace rather than
its first call's kernel set-up. ``--compare DIR`` runs the same measurement on the checkout in
DIR (for instance the parent commit: ``git worktree add /tmp/base HEAD~1``), alternating the two
``--rounds`` times, so both sides see the same machine load; the load average is recorded
beside every run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from lab.bench import loadavg, make_bench_pdf

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-api-key-0123456789"
ADMIN_KEY = "bench-admin-key-0123456789"
# "encode stages: pages=16 load=0.21 text=1.9 ..." (kb.pipeline.encode_pages's log line)
STAGES_LINE = re.compile(r"encode stages: (.*)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``python -m kb.cli run`` from the checkout ``root``, on its own data directory."""

    def __init__(self, root: Path, workdir: Path, env: dict[str, str]):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "stack.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(root),  # that checkout's code, whatever the venv points at
            "KB_DATA_DIR": str(workdir / "data"),
            "KB_PORT": str(self.port),
            "KB_API_KEY": API_KEY,
            "KB_ADMIN_KEY": ADMIN_KEY,
            **env,
        }

    def __enter__(self) -> Service:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kb.cli", "run"],
            cwd=self.root,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kb run exited:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the service did not become healthy:\n{self.log()[-4000:]}")

    def __exit__(self, *_: object) -> None:
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C: kb run stops what it started
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, key: str = API_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"},
                            timeout=120)  # fmt: skip


def ingest_one(c: httpx.Client, pdf: Path, timeout: float = 900) -> dict[str, Any]:
    """Upload ``pdf`` and follow it to ready: seconds to the upload's answer, the first page
    encoded, and ready."""
    t0 = time.perf_counter()
    r = c.post("/v1/documents", files={"file": (pdf.name, pdf.read_bytes())})
    r.raise_for_status()
    uploaded = time.perf_counter() - t0
    doc_id, first = r.json()["id"], None
    while time.perf_counter() - t0 < timeout:
        doc = c.get(f"/v1/documents/{doc_id}").json()
        if first is None and doc.get("pages_done"):
            first = time.perf_counter() - t0
        if doc["status"] in ("ready", "failed"):
            break
        time.sleep(0.1)
    else:
        raise TimeoutError(f"document {doc_id} not ready after {timeout} s")
    total = time.perf_counter() - t0
    if doc["status"] != "ready":
        raise RuntimeError(f"document failed: {doc.get('error')}")
    return {"pages": doc["pages"], "upload_s": round(uploaded, 3),
            "first_page_s": round(first or total, 2), "ready_s": round(total, 2),
            "pages_per_s": round(doc["pages"] / total, 3)}  # fmt: skip


def task_seconds(c: httpx.Client) -> dict[str, float]:
    """kb_task_seconds_sum per task, from /metrics."""
    text = c.get("/metrics").text
    out = {}
    for m in re.finditer(r'kb_task_seconds_sum\{task="([^"]+)"\} ([0-9.e+-]+)', text):
        out[m.group(1)] = float(m.group(2))
    return out


def stage_seconds(log: str) -> dict[str, float]:
    """The worker's "encode stages" lines, summed by stage."""
    totals: dict[str, float] = defaultdict(float)
    for line in log.splitlines():
        m = STAGES_LINE.search(line)
        if m:
            for item in m.group(1).split():
                name, _, value = item.partition("=")
                totals[name] += float(value)
    return {k: round(v, 3) for k, v in totals.items()}


def measure(root: Path, pages: int, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kb-bench-ingest-") as tmp:
        work = Path(tmp)
        pdf = make_bench_pdf(work / f"bench-{pages}.pdf", pages)
        warm = make_bench_pdf(work / "warm-up.pdf", 2)
        with Service(root, work, env) as service:
            with service.client() as c:
                ingest_one(c, warm)
                with service.client(ADMIN_KEY) as admin:
                    before = task_seconds(admin)
                    stages_before = stage_seconds(service.log())
                    load = loadavg()
                    result = ingest_one(c, pdf)
                    result["load"] = [load, loadavg()]
                    after = task_seconds(admin)
            stages = stage_seconds(service.log())
            result["task_s"] = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()
                                if v - before.get(k, 0.0) > 0}  # fmt: skip
            result["encode_stages_s"] = {k: round(v - stages_before.get(k, 0.0), 2)
                                         for k, v in stages.items()}  # fmt: skip
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m lab.bench_ingest",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--pages", type=int, default=50, help="pages of the timed PDF")
    parser.add_argument("--rounds", type=int, default=1, help="runs (of each side)")
    parser.add_argument("--compare", type=Path, help="another checkout, run alternately")
    parser.add_argument("--env", action="append", default=[], metavar="KB_X=V",
                        help="a setting for both sides' service (repeatable)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="JSON path (default data/bench/ingest.json)")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    sides = {"this": ROOT} | ({"compare": args.compare.resolve()} if args.compare else {})
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for name, root in sides.items():
            r = measure(root, args.pages, env)
            r |= {"side": name, "root": str(root), "round": round_ + 1}
            runs.append(r)
            print(f"{name:8s} round {round_ + 1}: {r['pages']} pages in {r['ready_s']} s = "
                  f"{r['pages_per_s']} pages/s (first page {r['first_page_s']} s), load "
                  f"{r['load'][0]} -> {r['load'][1]}; tasks {r['task_s']}; encode stages "
                  f"{r['encode_stages_s']}", flush=True)  # fmt: skip
    report: dict[str, Any] = {
        "command": " ".join(["python -m lab.bench_ingest", *(argv or sys.argv[1:])]),
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    if args.compare:
        median = {
            n: round(statistics.median(r["pages_per_s"] for r in runs if r["side"] == n), 3)
            for n in sides
        }
        report["median_pages_per_s"] = median
        report["ratio"] = round(median["this"] / median["compare"], 2)
        print(f"median pages/s: this {median['this']}, compare {median['compare']}: "
              f"{report['ratio']}x")  # fmt: skip
    out = args.out or ROOT / "data" / "bench" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
