"""The packer: every ready page of a collection into one context, a tier per page.

Like a fading memory (the seeds' forgetting curve): pinned pages and the newest pages keep their
exact text, older ones fewer and fewer tokens (base, small, tiny, gist), so everything fits:

1. Every page gets a floor: the richest vision tier that all pages can have within half the
   budget (gist at worst). Only when even gist cannot hold every page are the oldest unpinned
   pages left out, and then they are counted in ``left_out``: never dropped silently.
2. Then, pinned pages first and newest first, each page is raised to the richest tier the
   remaining budget allows: its text if it has any and it fits, else base, small, tiny.

A page's text tier costs what its text costs (``Candidate.text_tokens``, one token per 4 bytes
for the reference model), so a short page may be cheaper at text than at base.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ingest.tiers import TEXT

K = TypeVar("K")


@dataclass(frozen=True)
class Candidate(Generic[K]):
    key: K  # whatever the caller uses to find the page again
    recency: float  # larger = newer (e.g. the document's upload time)
    text_tokens: int | None = None  # cost of the page's text tier; None = no text to keep
    pinned: bool = False  # the packer keeps it at the text tier first


@dataclass
class Packing(Generic[K]):
    chosen: list[tuple[K, str]]  # (key, tier) in context order: oldest first, newest last
    tokens: int
    left_out: list[K] = field(default_factory=list)

    @property
    def tiers(self) -> dict[str, int]:
        return dict(Counter(tier for _, tier in self.chosen))


def pack(pages: Sequence[Candidate[K]], tier_tokens: dict[str, int], budget: int) -> Packing[K]:
    """Choose a tier per page so that the total tokens fit ``budget``.

    ``tier_tokens`` maps each vision tier to its tokens per page; the text tier is per page.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if not tier_tokens:
        raise ValueError("tier_tokens is empty")
    ladder = sorted(tier_tokens.items(), key=lambda kv: kv[1])  # cheapest vision tier first
    cheapest = ladder[0][1]

    # Pinned pages first, then newest first: the order of every decision below.
    order = sorted(pages, key=lambda c: (c.pinned, c.recency), reverse=True)
    fit = min(len(order), budget // cheapest) if cheapest > 0 else len(order)
    kept, left_out = order[:fit], [c.key for c in order[fit:]]

    floor = 0  # the richest vision tier every kept page can have within half the budget
    for i, (_, cost) in enumerate(ladder):
        if cost * len(kept) <= budget // 2:
            floor = i
    remaining = budget - ladder[floor][1] * len(kept)
    tiers: list[str] = []
    used = 0
    for cand in kept:
        floor_cost = ladder[floor][1]
        choice, cost = ladder[floor][0], floor_cost
        options = list(ladder[floor + 1 :])  # richer vision tiers
        if cand.text_tokens:
            options.append((TEXT, cand.text_tokens))  # the richest of all: the exact text
        for name, c in reversed(options):
            if c - floor_cost <= remaining:
                choice, cost = name, c
                break
        remaining -= cost - floor_cost
        used += cost
        tiers.append(choice)

    # Context order: oldest first, so the question and the newest pages sit closest together.
    in_order = sorted(zip(kept, tiers, strict=True), key=lambda ct: ct[0].recency)
    chosen = [(cand.key, tier) for cand, tier in in_order]
    return Packing(chosen=chosen, tokens=used, left_out=left_out)
