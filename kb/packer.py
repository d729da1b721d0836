"""The packer: every ready page of a collection into one context, a tier per page.

Like a fading memory, the newest pages keep the most tokens and the oldest the fewest. The packer
walks the pages from newest to oldest and gives each the richest tier that still leaves room for
every remaining page at the cheapest tier. Only when even the cheapest tier cannot hold every page
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
    ladder = sorted(tier_tokens.items(), key=lambda kv: kv[1], reverse=True)  # richest first
    cheapest = ladder[-1][1]

    newest_first = sorted(pages, key=lambda c: c.recency, reverse=True)
    fit = min(len(newest_first), budget // cheapest) if cheapest > 0 else len(newest_first)
    kept, left_out = newest_first[:fit], [c.key for c in newest_first[fit:]]

    chosen: list[tuple[K, str]] = []
    remaining = budget
    for i, cand in enumerate(kept):
        reserve = cheapest * (len(kept) - i - 1)  # what the older pages still need at minimum
        for tier, cost in ladder:
            if cost + reserve <= remaining:
                chosen.append((cand.key, tier))
                remaining -= cost
                break
        else:  # unreachable: fit guarantees the cheapest tier always fits
            raise AssertionError("packer invariant broken")
    chosen.reverse()  # oldest first: the question and the newest pages sit closest together
    return Packing(chosen=chosen, tokens=budget - remaining, left_out=left_out)
