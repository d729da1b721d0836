"""When stored objects are written and removed: deleting a document, and collecting garbage.

Page images and tensors are content-addressed (kb.keys): one object per page content, and per
model version and tier, shared by every page row with that content hash in any document. So an
object may be removed only when no page row references its content. Both sides of that
check-then-act hold the catalog's lock on the content (repo.lock_content): `store_pages` while it
makes sure a page's image exists and adds the row, `collect` while it finds the content
unreferenced and deletes its objects. A page stored again while its last reference is being
deleted therefore keeps its objects.

What removes what:

- `delete_document`: the row (its pages cascade), the original, then `collect` on the contents
  of its pages, which deletes those no other page shares.
- A task still running for a deleted document: render stores a page only while the document
  is there (`store_pages`); encode and reindex notice it gone after writing tensors and
  collect them (kb.pipeline).
- `collect_version`: once a reindex has switched its pages, the superseded version's tensors
  that no page serves any more.
- `sweep`: what a killed task left behind, objects whose content no page row has; run when a
  worker starts (workers.tasks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

import ingest
from kb.catalog import repo
from kb.context import Context
from kb.keys import PAGE_IMAGES, TENSORS, content_hash_of, page_image_key, tensor_key_under

log = logging.getLogger(__name__)

COLLECT_BATCH = 256  # contents locked and checked per transaction
# A store write still unfinished after this long was interrupted (no upload takes an hour).
ABANDONED_WRITE_S = 3600


def delete_document(ctx: Context, document_id: str) -> bool:
    """Delete a document and every object of it that nothing else uses; False if not found."""
    with ctx.session() as s:
        doc = repo.get_document(s, document_id)
        if doc is None:
            return False
        original, hashes = doc.original_key, repo.page_hashes(s, document_id)
        repo.delete_document(s, document_id)
    ctx.store.delete(original)
    removed = collect(ctx, hashes)
    log.info("deleted %s: the original and %d objects of its pages", document_id, removed)
    return True


def store_pages(ctx: Context, document_id: str, pages: Sequence[ingest.RenderedPage]) -> bool:
    """Make sure each page's image is stored and add (or refresh) its row, under the content
    lock; False, with nothing written, if the document is gone."""
    firsts = {p.content_hash: p for p in pages}
    # PNG encoding is the slow part: done before taking the lock, for images not there yet.
    missing = {
        h: ingest.png_bytes(p.image)
        for h, p in firsts.items()
        if not ctx.store.exists(page_image_key(h))
    }
    try:
        with ctx.session() as s:
            repo.lock_content(s, firsts)
            if repo.get_document(s, document_id) is None:
                return False
            for h, p in firsts.items():
                # Checked again under the lock: a collector may have removed it meanwhile.
                if h in missing or not ctx.store.exists(page_image_key(h)):
                    data = missing.get(h) or ingest.png_bytes(p.image)
                    ctx.store.put(page_image_key(h), data, "image/png")
            for page in pages:
                repo.upsert_page(
                    s,
                    document_id=document_id,
                    number=page.number,
                    content_hash=page.content_hash,
                    text=page.text,
                    text_source=page.text_source,
                    image_key=page_image_key(page.content_hash),
                )
            repo.record_progress(s, document_id)  # a render that stores chunks is not stalled
    except IntegrityError:
        # PostgreSQL: the document was deleted while this transaction inserted its pages.
        # The images written above are the deleter's to collect once this lock is released.
        with ctx.session() as s:
            if repo.get_document(s, document_id) is None:
                return False
        raise
    return True


def collect(ctx: Context, content_hashes: Iterable[str]) -> int:
    """Delete the image and the tensors (every version, every tier) of each content that no
    page row references; returns how many objects were deleted."""
    hashes = sorted(set(content_hashes))
    if not hashes:
        return 0
    tiers = [t for v in ctx.store.list_dirs(TENSORS) for t in ctx.store.list_dirs(v)]
    removed = 0
    for i in range(0, len(hashes), COLLECT_BATCH):
        batch = hashes[i : i + COLLECT_BATCH]
        with ctx.session() as s:
            repo.lock_content(s, batch)
            for h in set(batch) - repo.content_in_use(s, batch):
                keys = [page_image_key(h)] + [tensor_key_under(tier, h) for tier in tiers]
                removed += _delete(ctx, keys)
    return removed


def collect_version(ctx: Context, model_version: str, content_hashes: Iterable[str]) -> int:
    """Delete `model_version`'s tensors of each content that no page row serves from that
    version any more (after a reindex switched them); returns how many were deleted."""
    hashes = sorted(set(content_hashes))
    tiers = ctx.store.list_dirs(f"{TENSORS}{model_version}/")
    if not hashes or not tiers:
        return 0
    removed = 0
    for i in range(0, len(hashes), COLLECT_BATCH):
        batch = hashes[i : i + COLLECT_BATCH]
        with ctx.session() as s:
            repo.lock_content(s, batch)
            for h in set(batch) - repo.content_in_use_at(s, batch, model_version):
                removed += _delete(ctx, [tensor_key_under(tier, h) for tier in tiers])
    return removed


@dataclass
class SweepResult:
    contents: int  # unreferenced contents found in the store
    objects: int  # objects deleted


def sweep(ctx: Context) -> SweepResult:
    """Mark and sweep: collect every content in the store that no page row has (objects a
    killed task wrote for a document deleted since, or a page row that was never committed),
    and the temporary files of store writes that were interrupted."""
    with ctx.session() as s:
        live = repo.all_content_hashes(s)
    stored = {content_hash_of(k) for k in ctx.store.list(PAGE_IMAGES)}
    stored |= {content_hash_of(k) for k in ctx.store.list(TENSORS)}
    orphans = stored - live
    ctx.store.remove_abandoned_writes(older_than_s=ABANDONED_WRITE_S)
    # collect checks each again under the lock: a page may have been stored since `live`.
    result = SweepResult(contents=len(orphans), objects=collect(ctx, orphans))
    if orphans:
        log.info("sweep: %d unreferenced contents, %d objects deleted", *vars(result).values())
    return result


def _delete(ctx: Context, keys: list[str]) -> int:
    present = [k for k in keys if ctx.store.exists(k)]
    for key in present:
        ctx.store.delete(key)
    return len(present)
