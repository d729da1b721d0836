"""The page-tensor RAM cache: least recently used pages go first, and the cap is in bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kb.store import LocalStore, ObjectNotFound
from kb.tensors import TensorCache, dumps, loads, tensor_key

VERSION, TIER = "v-test", "tiny"
PAGE_BYTES = 64 * 32 * 4  # one page: (64, 32) float32


def page(seed: int) -> dict[str, torch.Tensor]:
    return {"tokens": torch.full((64, 32), float(seed))}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def put_pages(cache: TensorCache, names: list[str]) -> None:
    for seed, name in enumerate(names):
        cache.put(VERSION, TIER, name, page(seed))


def in_ram(cache: TensorCache, store: LocalStore, name: str) -> bool:
    """Whether `name` is served from RAM: its object is removed from the store first."""
    store.delete(tensor_key(VERSION, TIER, name))
    try:
        cache.get(VERSION, TIER, name)
    except ObjectNotFound:
        return False
    return True


def test_tensors_round_trip_through_safetensors() -> None:
    tensors = {"tokens": torch.randn(16, 8), "mask": torch.ones(16, dtype=torch.bool)}
    back = loads(dumps(tensors))
    assert set(back) == set(tensors)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_the_least_recently_used_page_is_evicted_when_the_bytes_run_out(store) -> None:
    cache = TensorCache(store, max_bytes=int(2.5 * PAGE_BYTES))  # room for two pages
    put_pages(cache, ["a", "b", "c"])
    assert torch.equal(cache.get(VERSION, TIER, "a")["tokens"], page(0)["tokens"])
    cache.get(VERSION, TIER, "b")
    cache.get(VERSION, TIER, "a")  # a is now more recent than b
    assert (cache.hits, cache.misses) == (1, 2)
    cache.get(VERSION, TIER, "c")  # a third page's bytes: b goes
    assert (cache.hits, cache.misses) == (1, 3)
    assert in_ram(cache, store, "a") and in_ram(cache, store, "c")
    assert not in_ram(cache, store, "b")


def test_the_cap_counts_bytes_not_pages(store) -> None:
    cache = TensorCache(store, max_bytes=3 * PAGE_BYTES)
    cache.put(VERSION, TIER, "big", {"tokens": torch.zeros(128, 32)})  # two pages' bytes
    put_pages(cache, ["a", "b"])
    for name in ["big", "a", "b"]:  # four pages' bytes in all: big, the oldest, goes
        cache.get(VERSION, TIER, name)
    assert not in_ram(cache, store, "big")
    assert in_ram(cache, store, "a") and in_ram(cache, store, "b")


def test_a_page_larger_than_the_cap_is_returned_but_not_kept(store) -> None:
    cache = TensorCache(store, max_bytes=2 * PAGE_BYTES)
    put_pages(cache, ["a"])
    cache.put(VERSION, TIER, "huge", {"tokens": torch.zeros(64 * 3, 32)})
    cache.get(VERSION, TIER, "a")
    assert cache.get(VERSION, TIER, "huge")["tokens"].shape == (192, 32)
    assert not in_ram(cache, store, "huge")
    assert in_ram(cache, store, "a")  # and it evicted nothing
