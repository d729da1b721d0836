"""The OpenAPI document against the running service: Schemathesis generates requests from
/openapi.json, valid and invalid ones (NUL bytes, huge numbers, wrong types, random files), and
checks every answer: no server error, and every status code, content type, header and body is
one the document declares. Bounded: a fixed seed and a few examples per operation (~20 s).

`make fuzz` runs this test alone; SCHEMATHESIS_SEED and SCHEMATHESIS_EXAMPLES explore further.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import ADMIN_KEY, Stack, make_pdf, wait_document

pytestmark = pytest.mark.slow

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own stack: the fuzzer deletes and pins documents it finds, as a client may.
    env = {"KB_MAX_UPLOAD_MB": "1", "KB_BODY_READ_TIMEOUT_S": "5", "KB_MAX_ASKS_IN_FLIGHT": "2"}
    s = Stack(tmp_path_factory.mktemp("contract") / "data", env).start()
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log()


def test_the_openapi_contract_holds_under_fuzzing(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as c:  # a ready document, so that questions and pages have answers
        pdf = make_pdf(tmp_path / "seed.pdf", ["The fuzzer reads this page."]).read_bytes()
        r = c.post("/v1/documents", files={"file": ("seed.pdf", pdf)})
        assert wait_document(c, r.json()["id"])["status"] == "ready"
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is a dev dependency (pyproject.toml)"
    started = time.monotonic()
    run = subprocess.run(
        [
            cli,
            "run",
            f"{stack.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {ADMIN_KEY}",  # every route, the admin ones too
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            os.environ.get("SCHEMATHESIS_EXAMPLES", "8"),
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            os.environ.get("SCHEMATHESIS_SEED", "12"),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its caches (.hypothesis, .schemathesis) stay out of the work tree
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "500 Internal Server Error" not in stack.log_path.read_text(errors="replace")
    if "SCHEMATHESIS_EXAMPLES" not in os.environ:
        assert time.monotonic() - started < 60  # the bound `make test` relies on
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}
