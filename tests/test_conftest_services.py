"""The service fixtures skip where a service cannot be had, but fail in CI, which must run them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest_services import LOOPBACK, port_open, unavailable

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="no PostgreSQL.*in CI every service test"):
        unavailable("no PostgreSQL")


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_a_missing_service_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL"):
        unavailable("no PostgreSQL")


def test_the_postgres_fixture_fails_in_ci_when_no_server_can_be_had(tmp_path: Path) -> None:
    """The real fixture, in a pytest of its own that can find no PostgreSQL server binaries."""
    if port_open(LOOPBACK, 5432) or list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("a PostgreSQL server is running or installed outside PATH here")
    (tmp_path / "test_needs_pg.py").write_text(
        'pytest_plugins = ["tests.conftest_services"]\n\n'
        "def test_needs_pg(postgres_admin_url):\n    pass\n"
    )
    bin_dir = tmp_path / "bin"  # PATH with only python: no initdb, no pg_ctl
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    outcomes = {}
    for ci in ("true", ""):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KB_TEST_")},
            "PATH": str(bin_dir),
            "PYTHONPATH": str(ROOT),
            "CI": ci,
        }
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        outcomes[ci] = run.stdout.strip().splitlines()[-1]
    assert shutil.which("initdb", path=str(bin_dir)) is None
    assert "1 error" in outcomes["true"] and "no PostgreSQL" in outcomes["true"], outcomes
    assert "1 skipped" in outcomes[""], outcomes
