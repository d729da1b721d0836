"""One model version, in the catalog: the version every process should run.

Tensors of one model version mean nothing to another model, so the catalog records the version
it serves (repo.serving_version): the first API or worker process to start on an empty catalog
records its own, and a reindex to another version moves it when it switches its pages
(kb.pipeline.finish_reindex). A process running another version says so (`mismatch`, shown by
/healthz); the reader only ever packs pages encoded for the version it runs (kb.reader).
"""

from __future__ import annotations

from kb.catalog import repo
from kb.context import Context


def claim(ctx: Context) -> str:
    """Record this process's model version as the serving one unless the catalog has one;
    returns the serving version."""
    with ctx.session() as s:
        return repo.claim_serving_version(s, ctx.backend.version)


def mismatch(ctx: Context) -> str | None:
    """Why this process's model version is not the one the catalog serves; None if it is (or
    the catalog has none yet)."""
    with ctx.session() as s:
        serving = repo.serving_version(s)
    running = ctx.backend.version
    if serving is None or serving == running:
        return None
    return (
        f"this process runs model version {running} but the catalog serves {serving}: its "
        f"questions leave out every page encoded for {serving}; restart it with the weights "
        f"of {serving}, or finish a reindex to {running}"
    )
