"""Scratch directories for tasks: removed when the task ends, or at the next start if it was killed.

Each directory holds an exclusive lock (flock) on a file inside it for as long as its owner
runs; the kernel drops the lock when the process dies, however it dies. So any process may
remove the directories whose lock it can take: their owners are gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "kb-task-"
LOCK_FILE = ".owner"
# A directory without its lock file is being created or being removed; after this long, neither.
UNLOCKED_GRACE_S = 60


@contextlib.contextmanager
def scratch_dir(root: Path) -> Iterator[Path]:
    """A new directory under `root`, locked by this process, removed on exit."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    fd = os.open(path / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)  # unlocks


def remove_abandoned(root: Path) -> int:
    """Remove the scratch directories under `root` whose owner is gone; returns how many."""
    if not root.is_dir():
        return 0
    removed = 0
    for path in root.glob(f"{PREFIX}*"):
        try:
            fd = os.open(path / LOCK_FILE, os.O_RDWR)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > UNLOCKED_GRACE_S:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its owner is running
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d scratch directories of killed tasks under %s", removed, root)
    return removed
