"""Where page images and tensors live in the object store: content-addressed keys.

A page's content hash (sha256 of its pixels and text, ingest.render) names its objects, so an
identical page in any document, any collection, is stored once (per model version and tier for
tensors). Every key ends with '<hash>.<extension>'. (Originals: kb.pipeline.original_key.)
"""

from __future__ import annotations


def page_image_key(content_hash: str) -> str:
    return f"pages/{content_hash[:2]}/{content_hash}.png"


def tensor_key(model_version: str, tier: str, content_hash: str) -> str:
    return f"tensors/{model_version}/{tier}/{content_hash[:2]}/{content_hash}.safetensors"


PAGE_IMAGES = "pages/"  # the prefix of every page image
TENSORS = "tensors/"  # the prefix of every tensor; the next two levels: version, tier


def tensor_key_under(tier_prefix: str, content_hash: str) -> str:
    """A tensor's key given its 'tensors/<version>/<tier>/' prefix (as the store lists it)."""
    version, tier = tier_prefix.removeprefix(TENSORS).strip("/").split("/")
    return tensor_key(version, tier, content_hash)


def content_hash_of(key: str) -> str:
    """The content hash a page image or tensor key names."""
    return key.rsplit("/", 1)[-1].split(".", 1)[0]
