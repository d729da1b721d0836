"""Collections as a whole: what a key may see of them, and deleting one with everything in it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from kb import objects
from kb.catalog import repo
from kb.context import Context

log = logging.getLogger(__name__)

# Rounds of "delete its documents, then the collection if no upload added one meanwhile".
DELETE_ATTEMPTS = 5


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    documents: int  # in any state
    pages: int  # rendered so far


def visible(ctx: Context, within: Iterable[str] | None) -> list[CollectionInfo]:
    """Every collection (`within` None), or those named in `within`, by name. A name in
    `within` with no collection yet (a key made before the first upload, or after a delete) is
    listed empty: the key may upload there."""
    names = None if within is None else set(within)
    with ctx.session() as s:
        counts = {
            name: CollectionInfo(name, d, p) for name, d, p in repo.collection_counts(s, names)
        }
    for name in names or ():
        counts.setdefault(name, CollectionInfo(name, 0, 0))
    return [counts[name] for name in sorted(counts)]


def delete(ctx: Context, name: str) -> bool:
    """Delete the collection: each document as DELETE /v1/documents/{id} does (its original,
    and its page images and tensors no other page shares: kb.objects), then its jobs and the
    collection itself. False if there is no such collection."""
    for _ in range(DELETE_ATTEMPTS):
        with ctx.session() as s:
            if repo.get_collection(s, name) is None:
                return False
            ids = repo.document_ids_in(s, name)
        for document_id in ids:
            objects.delete_document(ctx, document_id)
        try:
            with ctx.session() as s:
                if repo.delete_empty_collection(s, name):
                    log.info("deleted collection %r and its %d documents", name, len(ids))
                    return True
        except IntegrityError:  # PostgreSQL: a document was added at that moment
            pass
    raise RuntimeError(
        f"collection {name!r} kept receiving documents; deleted {DELETE_ATTEMPTS} rounds of them"
    )
