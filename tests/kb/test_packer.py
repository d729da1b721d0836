from __future__ import annotations

import pytest

from kb.packer import Candidate, pack

TIERS = {"base": 256, "small": 100, "tiny": 64, "gist": 16}
ORDER = ["gist", "tiny", "small", "base", "text"]  # poorest to richest


def pages(n: int, text: int | None = None) -> list[Candidate]:
    return [Candidate(key=i, recency=float(i), text_tokens=text) for i in range(n)]  # n-1 newest


def cost(p, cands) -> int:
    by_key = {c.key: c for c in cands}
    return sum(by_key[k].text_tokens if t == "text" else TIERS[t] for k, t in p.chosen)


def test_everything_at_text_when_it_fits() -> None:
    cands = pages(4, text=300)
    p = pack(cands, TIERS, 4 * 300)
    assert p.tiers == {"text": 4} and p.tokens == 1200 and p.left_out == []
    assert [k for k, _ in p.chosen] == [0, 1, 2, 3]  # oldest first in the context


def test_pages_without_text_get_vision_tiers() -> None:
    p = pack(pages(4), TIERS, 4 * 300)
    assert p.tiers == {"base": 4} and p.tokens == 1024


def test_forgetting_curve_newest_exact_oldest_faded() -> None:
    cands = pages(1000, text=500)
    p = pack(cands, TIERS, 65536)
    assert p.tokens == cost(p, cands) <= 65536 and len(p.chosen) == 1000 and not p.left_out
    ranks = [ORDER.index(t) for _, t in p.chosen]  # oldest -> newest
    assert ranks == sorted(ranks), "an older page got a richer tier than a newer one"
    assert p.chosen[-1][1] == "text" and p.chosen[0][1] in ("gist", "tiny")
    assert p.tiers["text"] >= 50  # half the budget goes to exact text for the newest pages


def test_pinned_pages_get_text_first_whatever_their_age() -> None:
    cands = pages(200, text=400)
    cands[3] = Candidate(key=3, recency=3.0, text_tokens=400, pinned=True)
    p = pack(cands, TIERS, 200 * 16 + 400)
    tiers = dict(p.chosen)
    assert tiers[3] == "text"
    assert list(tiers.values()).count("text") == 1


def test_short_page_is_cheaper_at_text_than_base() -> None:
    cands = [Candidate(key=0, recency=0.0, text_tokens=20)]
    assert pack(cands, TIERS, 100).chosen == [(0, "text")]


def test_budget_below_cheapest_leaves_oldest_out_and_says_so() -> None:
    p = pack(pages(10), TIERS, 16 * 4 + 10)
    assert len(p.chosen) == 4 and p.tiers == {"gist": 4}
    assert sorted(p.left_out) == [0, 1, 2, 3, 4, 5]  # the six oldest
    assert p.tokens == 64


def test_pinned_pages_are_the_last_left_out() -> None:
    cands = pages(10)
    cands[0] = Candidate(key=0, recency=0.0, pinned=True)
    p = pack(cands, TIERS, 16 * 2)
    assert {k for k, _ in p.chosen} == {0, 9}


@pytest.mark.parametrize(
    "n,budget,text", [(1, 16, None), (7, 500, 90), (300, 65536, 700), (5000, 65536, 300), (3, 0, 5)]
)
def test_never_exceeds_budget_and_accounts_for_every_page(n, budget, text) -> None:
    cands = pages(n, text)
    p = pack(cands, TIERS, budget)
    assert p.tokens <= budget
    assert p.tokens == cost(p, cands)
    assert len(p.chosen) + len(p.left_out) == n
    assert len({k for k, _ in p.chosen} | set(p.left_out)) == n


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        pack(pages(1), TIERS, -1)
    with pytest.raises(ValueError):
        pack(pages(1), {}, 10)
