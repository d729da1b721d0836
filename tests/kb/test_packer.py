from __future__ import annotations

import pytest

from kb.packer import Candidate, pack

TIERS = {"base": 256, "small": 100, "tiny": 64, "gist": 16}


def pages(n: int) -> list[Candidate]:
    return [Candidate(key=i, recency=float(i)) for i in range(n)]  # key n-1 is the newest


def test_everything_at_base_when_it_fits() -> None:
    p = pack(pages(4), TIERS, 4 * 256)
    assert p.tiers == {"base": 4} and p.tokens == 1024 and p.left_out == []
    assert [k for k, _ in p.chosen] == [0, 1, 2, 3]  # oldest first in the context


def test_fading_memory_newest_richest() -> None:
    p = pack(pages(100), TIERS, 3000)
    assert p.tokens <= 3000 and len(p.chosen) == 100 and not p.left_out
    order = ["gist", "tiny", "small", "base"]
    ranks = [order.index(t) for _, t in p.chosen]  # oldest -> newest
    assert ranks == sorted(ranks), "an older page got a richer tier than a newer one"
    # 100 x 16 = 1600 at gist; the 1400 left lift the 29 newest pages to tiny (48 more each).
    assert p.tiers == {"gist": 71, "tiny": 29} and p.tokens == 2992


def test_every_page_reaches_a_tier_before_any_page_goes_beyond_it() -> None:
    p = pack(pages(1000), TIERS, 65536)
    assert p.tiers == {"tiny": 958, "small": 42} and p.tokens == 65512
    assert [t for _, t in p.chosen[-42:]] == ["small"] * 42  # the newest


def test_budget_below_cheapest_leaves_oldest_out_and_says_so() -> None:
    p = pack(pages(10), TIERS, 16 * 4 + 10)
    assert len(p.chosen) == 4 and p.tiers == {"gist": 4}
    assert sorted(p.left_out) == [0, 1, 2, 3, 4, 5]  # the six oldest
    assert p.tokens == 64


@pytest.mark.parametrize("n,budget", [(1, 16), (7, 500), (300, 65536), (5000, 65536), (3, 0)])
def test_never_exceeds_budget_and_accounts_for_every_page(n: int, budget: int) -> None:
    p = pack(pages(n), TIERS, budget)
    assert p.tokens <= budget
    assert p.tokens == sum(TIERS[t] for _, t in p.chosen)
    assert len(p.chosen) + len(p.left_out) == n
    assert len({k for k, _ in p.chosen} | set(p.left_out)) == n


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        pack(pages(1), TIERS, -1)
    with pytest.raises(ValueError):
        pack(pages(1), {}, 10)
