"""Which package may import which (docs/architecture.md): checked on the source, not assumed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    # The serving core never imports the lab (training, synthetic data, evaluation, benchmarks):
    # the service runs without it, as nanochat's engine runs without its scripts.
    "kb": {"fastapi", "starlette", "celery", "kombu", "api", "workers", "lab"},
    "ingest": {"fastapi", "starlette", "celery", "kombu", "api", "workers", "kb", "torch", "lab"},
    # The API reaches the broker only through the queue port (kb.queue, workers.queue).
    "api": {"celery", "kombu", "lab"},
    "workers": {"lab"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_core_packages_import_no_framework(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package]) for f in files}
    assert {f: m for f, m in bad.items() if m} == {}
