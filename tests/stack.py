"""The whole service started the way `make run` starts it (`python -m kb.cli run`), for tests.

The stack is a real process tree: the launcher, an embedded Redis (unless KB_REDIS_URL is given),
a Celery worker process and the API. Tests talk to it over HTTP only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pymupdf

from kb.settings import Settings
from tests.conftest_services import free_port

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-api-key-0123456789"
ADMIN_KEY = "test-admin-key-0123456789"


class Stack:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}-stack.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KB_")},
            "KB_DATA_DIR": str(data_dir),
            "KB_PORT": str(self.port),
            "KB_API_KEY": API_KEY,
            "KB_ADMIN_KEY": ADMIN_KEY,
            "KB_RENDER_CHUNK_PAGES": "4",
            "KB_WORKER_CONCURRENCY": "1",  # one worker process (the default is one per core)
            **(env or {}),
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180, health: tuple[int, ...] = (200,)) -> Stack:
        """Start `kb run` and wait until /healthz answers one of `health` (503: a stack that
        may start degraded, e.g. on other weights than the catalog serves)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kb.cli", "run"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kb run exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code in health:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the stack did not become healthy in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def children(self) -> list[int]:
        """Every process in the launcher's tree (pids), read from /proc."""
        assert self.proc is not None
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        tree, frontier = [], [self.proc.pid]
        while frontier:
            pid = frontier.pop()
            kids = [p for p, pp in parents.items() if pp == pid]
            tree.extend(kids)
            frontier.extend(kids)
        return tree

    def stop(self) -> int:
        """Ctrl-C, as a person would: SIGINT to the launcher. Returns its exit code; the pids of
        its process tree from just before are in ``self.tree_before_stop``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.tree_before_stop = self.children()
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        finally:
            self._log.close()

    def survivors(self) -> list[int]:
        """Processes of the tree from before the stop that are still alive (zombies excepted)."""
        alive = []
        for pid in getattr(self, "tree_before_stop", []):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                alive.append(pid)
        return alive

    def settings(self) -> Settings:
        """The settings the stack's processes run with: its catalog, its object store."""
        given = {k.removeprefix("KB_").lower(): v for k, v in self.env.items() if k[:3] == "KB_"}
        return Settings(_env_file=None, **given)  # type: ignore[call-arg]

    def client(self, key: str = API_KEY) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )


def wait_for(check: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


def wait_document(client: httpx.Client, doc_id: str, timeout: float = 300) -> dict:
    final: dict = {}

    def settled() -> bool:
        nonlocal final
        final = client.get(f"/v1/documents/{doc_id}").json()
        return final["status"] in ("ready", "failed")

    wait_for(settled, f"document {doc_id} to settle", timeout)
    return final


def make_pdf(path: Path, pages: list[str], **save_kwargs: object) -> Path:
    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page(width=595, height=842)
        page.insert_textbox(pymupdf.Rect(50, 50, 545, 792), text, fontsize=12)
    doc.save(path, **save_kwargs)
    doc.close()
    return path


def upload_ready(stack: Stack, folder: Path) -> dict:
    """A one-page document uploaded and ready, with its page image: stored before bad input or
    an attack, it must come through untouched."""
    pdf = make_pdf(folder / "good.pdf", ["The password is swordfish."])
    with stack.client() as c:
        r = c.post("/v1/documents", files={"file": ("good.pdf", pdf.read_bytes())})
        doc = wait_document(c, r.json()["id"])
        assert doc["status"] == "ready", stack.log()
        image = c.get(f"/v1/documents/{doc['id']}/pages/1/image").content
    return {"doc": doc, "image": image}
