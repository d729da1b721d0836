"""The packer: every ready page of a collection into one context, a tier per page.

Like a fading memory, newer pages keep more tokens and older ones fewer, but every page is kept
as readable as the budget allows: all pages start at the cheapest tier, then pages are upgraded
one tier at a time, newest first, each round only as far as the budget goes (so every page
reaches tiny before any reaches small). Only when even the cheapest tier cannot hold every page
are the oldest pages left out, and then they are counted in ``left_out``: never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(frozen=True)
class Candidate(Generic[K]):
    key: K  # whatever the caller uses to find the page again
    recency: float  # larger = newer (e.g. the document's upload time)


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

    ``tier_tokens`` maps tier name to tokens per page; richer tiers cost more.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if not tier_tokens:
        raise ValueError("tier_tokens is empty")
    ladder = sorted(tier_tokens.items(), key=lambda kv: kv[1])  # cheapest first
    cheapest = ladder[0][1]

    newest_first = sorted(pages, key=lambda c: c.recency, reverse=True)
    fit = min(len(newest_first), budget // cheapest) if cheapest > 0 else len(newest_first)
    kept, left_out = newest_first[:fit], [c.key for c in newest_first[fit:]]

    level = [0] * len(kept)  # index into ladder, per kept page (newest first)
    remaining = budget - cheapest * len(kept)
    for step in range(1, len(ladder)):
        extra = ladder[step][1] - ladder[step - 1][1]
        for i in range(len(kept)):
            # Pages at the previous level form a newest-first prefix; stop at the first page
            # that cannot move up, so an older page never gets more than a newer one.
            if level[i] != step - 1 or extra > remaining:
                break
            level[i] = step
            remaining -= extra

    chosen = [(cand.key, ladder[lv][0]) for cand, lv in zip(kept, level, strict=True)]
    chosen.reverse()  # oldest first: the question and the newest pages sit closest together
    return Packing(chosen=chosen, tokens=budget - remaining, left_out=left_out)
