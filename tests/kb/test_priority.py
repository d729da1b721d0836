"""The fair-queue policy: a chunk is as urgent as its document is young."""

from __future__ import annotations

from kb import priority


def test_first_pages_of_every_document_are_most_urgent() -> None:
    assert priority.encode_priority(1) == priority.HIGHEST
    assert priority.encode_priority(16) == priority.HIGHEST  # a chunk starting at page 16


def test_the_long_tail_of_a_large_document_yields() -> None:
    got = [priority.encode_priority(p) for p in (17, 64, 65, 256, 257, 2000)]
    assert got == [3, 3, 6, 6, priority.LOWEST, priority.LOWEST]


def test_priority_never_rises_along_a_document() -> None:
    got = [priority.encode_priority(p) for p in range(1, 2001)]
    assert got == sorted(got)
    assert set(got) <= set(priority.STEPS)  # each lands on a list Redis keeps


def test_renders_outrank_encodes_and_reindexing_is_background() -> None:
    assert priority.RENDER == priority.HIGHEST
    assert priority.REINDEX == priority.LOWEST
    assert priority.HIGHEST < priority.LOWEST  # Redis (kombu) serves the lower number first
