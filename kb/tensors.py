"""Page tensors in the object store: safetensors under content-addressed keys, plus a RAM cache.

Keyed by model version / tier / page content hash (kb.keys.tensor_key), so an identical page (in
any document, any collection) is encoded once per model version and tier.
"""

from __future__ import annotations

import threading

from cachetools import LRUCache
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from kb.keys import tensor_key as tensor_key  # re-exported: the cache's callers use it
from kb.model.base import PageTensors
from kb.store import ObjectStore


def dumps(tensors: PageTensors) -> bytes:
    return st_save({k: v.contiguous() for k, v in tensors.items()})


def loads(data: bytes) -> PageTensors:
    return st_load(data)


def _nbytes(tensors: PageTensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class TensorCache:
    """Loads page tensors from the store, keeping the most recently used in RAM up to a byte cap.

    cachetools' LRUCache, sized in bytes (`getsizeof`): adding a page evicts the least recently
    used until it fits; a page larger than the whole cap is returned but not kept. LRUCache is not
    thread-safe (a hit reorders it), and the API reads from its thread pool: one lock guards it.
    """

    def __init__(self, store: ObjectStore, max_bytes: int = 1 << 30):
        self.store = store
        self.max_bytes = max_bytes
        self._items: LRUCache[str, PageTensors] = LRUCache(maxsize=max_bytes, getsizeof=_nbytes)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model_version: str, tier: str, page_hash: str) -> PageTensors:
        key = tensor_key(model_version, tier, page_hash)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self.hits += 1
                return cached
        tensors = loads(self.store.get(key))  # outside the lock: store reads may be slow
        with self._lock:
            self.misses += 1
            if key not in self._items and _nbytes(tensors) <= self.max_bytes:
                self._items[key] = tensors
        return tensors

    def put(self, model_version: str, tier: str, page_hash: str, tensors: PageTensors) -> None:
        self.store.put(tensor_key(model_version, tier, page_hash), dumps(tensors))

    def exists(self, model_version: str, tier: str, page_hash: str) -> bool:
        return self.store.exists(tensor_key(model_version, tier, page_hash))
