"""Tier resolutions, after DeepSeek-OCR's modes (see design.md).

Every vision tier keeps the same pixel density per token: one token covers a 64 x 64 pixel cell of
the square page render, so the token grid is (size / 64) x (size / 64). A fully convolutional
encoder with total stride 64 therefore serves every tier with the same weights.

The smaller tiers crop (``Tier.crop``): they show the square around the page's ink, not its
margins (ingest.render.content_square), so the pixels they can afford go to the text. A page of
text with 2 cm margins then reaches small and tiny ~1.2-1.7 times larger: measured, the shipped
encoder read small 51% -> 73% and tiny 29% -> 58% of held-out pages back with no retraining
(docs/benchmarks.md). Base keeps the whole page: its glyphs are already at the size it reads best.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tier:
    name: str
    size: int  # the square render, in pixels (0 for the text tier)
    tokens: int  # vision tokens per page (0 for the text tier: its cost is its text length)
    crop: bool = False  # shows the square around the page's ink, not the whole page

    @property
    def grid(self) -> int:
        return self.size // 64


TEXT = "text"
# Highest fidelity first: the packer walks down this list when the budget is tight.
VISION_TIERS: tuple[Tier, ...] = (
    Tier("base", 1024, 256),
    Tier("small", 640, 100, crop=True),
    Tier("tiny", 512, 64, crop=True),
    Tier("gist", 256, 16, crop=True),
)
TIERS: dict[str, Tier] = {t.name: t for t in VISION_TIERS}
TIER_NAMES: tuple[str, ...] = tuple(t.name for t in VISION_TIERS)
CANONICAL = VISION_TIERS[0]  # the render every smaller tier is derived from


def get_tier(name: str) -> Tier:
    try:
        return TIERS[name]
    except KeyError:
        raise ValueError(
            f"unknown tier {name!r}; expected one of {', '.join(TIER_NAMES)}"
        ) from None
