"""The `kb` commands against a running stack (`kb run`), over HTTP as a user's terminal would.

The commands run in-process (typer's runner) with the URL and key from the environment, as a
user sets KB_URL and KB_API_KEY; the stack is a real process tree (tests.stack).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb.cli import app
from tests.stack import ADMIN_KEY, API_KEY, ROOT, Stack, make_pdf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("cli") / "data").start()
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log()


def kb(stack: Stack, *args: str, key: str = API_KEY) -> tuple[int, str]:
    env = {"KB_URL": stack.url, "KB_API_KEY": key, "KB_ADMIN_KEY": ADMIN_KEY, "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_upload_follows_every_document_to_ready_then_docs_ask_pin_rm(stack, tmp_path):
    pdf = make_pdf(tmp_path / "report.pdf", ["Revenue in the third quarter was 4.2 million euros."])
    note = tmp_path / "note.txt"
    note.write_text("Meeting note\n\nThe board approved the new warehouse in Rotterdam.\n")
    code, out = kb(stack, "upload", str(pdf), str(note), "--collection", "cli")
    assert code == 0, out
    assert "report.pdf" in out and "note.txt" in out and out.count("ready") >= 2, out

    code, out = kb(stack, "docs", "--collection", "cli")
    assert code == 0 and "report.pdf" in out and "note.txt" in out, out
    with stack.client() as c:
        docs = {d["filename"]: d for d in c.get("/v1/documents?collection=cli").json()["documents"]}
    assert {d["status"] for d in docs.values()} == {"ready"}

    for how in ("--stream", "--no-stream"):  # streamed (server-sent events), then whole
        code, out = kb(stack, "ask", "Where is the new warehouse?", "-c", "cli", how)
        assert code == 0, out
        assert out.index("Rotterdam") < out.index(docs["note.txt"]["id"]), out  # then citations

    code, out = kb(stack, "pin", docs["report.pdf"]["id"])
    assert code == 0 and "pinned" in out
    with stack.client() as c:
        assert c.get(f"/v1/documents/{docs['report.pdf']['id']}").json()["pinned"] is True
    code, out = kb(stack, "pin", docs["report.pdf"]["id"], "--off")
    assert code == 0 and "unpinned" in out

    code, out = kb(stack, "rm", docs["note.txt"]["id"])
    assert code == 0, out
    with stack.client() as c:
        assert c.get(f"/v1/documents/{docs['note.txt']['id']}").status_code == 404


def test_errors_are_one_readable_line_and_a_failing_exit_code(stack, tmp_path):
    bad = tmp_path / "tool.exe"
    bad.write_bytes(b"MZ\x90\x00" + b"\x00" * 64)
    code, out = kb(stack, "upload", str(bad))
    assert code == 1 and "tool.exe" in out and "415" in out, out
    code, out = kb(stack, "docs", key="wrong-key")
    assert code == 1 and "invalid API key" in out and "401" in out, out
    code, out = kb(stack, "rm", "0" * 32)
    assert code == 1 and "404" in out, out
    code, out = kb(stack, "reindex", "--collection", "no-such-collection")
    assert code == 1 and "404" in out, out


def test_reindex_follows_the_job_to_done(stack, tmp_path):
    pdf = make_pdf(tmp_path / "a.pdf", ["The Lisbon office employs 37 engineers."])
    assert kb(stack, "upload", str(pdf), "-c", "re")[0] == 0
    code, out = kb(stack, "reindex", "-c", "re")
    assert code == 0 and "done" in out, out


def test_the_kb_script_runs_as_installed(stack):
    """`python -m kb.cli` (what the `kb` script runs) with only KB_URL / KB_API_KEY set."""
    env = {"PATH": "/usr/bin:/bin", "KB_URL": stack.url, "KB_API_KEY": API_KEY, "COLUMNS": "200"}
    r = subprocess.run(
        [sys.executable, "-m", "kb.cli", "docs"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert r.returncode == 0, r.stderr.decode()
    assert "status" in r.stdout.decode()


def test_key_from_the_data_directory_of_kb_run(stack, tmp_path, monkeypatch):
    """On the machine running `make run`, no setting is needed: the keys it keeps are read."""
    monkeypatch.delenv("KB_API_KEY", raising=False)
    data = Path(stack.env["KB_DATA_DIR"])
    (data / "api_key").write_text(API_KEY)  # as `kb run` writes it when KB_API_KEY is unset
    result = CliRunner().invoke(
        app, ["docs"], env={"KB_URL": stack.url, "KB_DATA_DIR": str(data), "COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output


def test_keys_create_list_revoke(stack):
    code, out = kb(stack, "keys", "create", "finance-team", "-c", "cli")
    assert code == 0, out
    lines = dict(line.split(maxsplit=1) for line in out.splitlines() if line[:3] in ("id ", "key"))
    key_id, secret = lines["id"].strip(), lines["key"].strip()
    code, out = kb(stack, "keys", "list")
    assert code == 0 and key_id in out and "finance-team" in out and secret not in out, out
    assert kb(stack, "docs", "-c", "cli", key=secret)[0] == 0
    code, out = kb(stack, "docs", "-c", "other", key=secret)
    assert code == 1 and "403" in out, out
    assert kb(stack, "keys", "revoke", key_id)[0] == 0
    code, out = kb(stack, "docs", "-c", "cli", key=secret)
    assert code == 1 and "401" in out, out
