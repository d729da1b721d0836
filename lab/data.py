"""Synthetic documents for training and evaluating the reference model: pages, facts, questions.

Every page is laid out and rendered through ``ingest`` (``layout_styled_html`` -> pymupdf Story
on A4, then ``render_pdf_bytes`` -> the canonical 1024 x 1024 render and its text layer), exactly
as an uploaded text document is, so the model trains on the pixels it will see in production. The
ground truth of a page is its text layer (what the text tier holds and read-back should produce).

    make_document(seed, split)       a report, memo, invoice, HR form, meeting notes... 1-N pages,
                                     with facts (question, short exact answer, page)
    needle_page(seed, split)         one page of filler carrying exactly one unique fact
    filler_page(seed, split)         a realistic page stating no fact that needles use
    cross_document_set(seed, split)  office summaries + questions that need several documents

Determinism: every draw comes from ``random.Random`` seeded with a string that includes the data
version, the generator, the split and the seed, so (seed, split) always gives the same document
(and the same pixels: pymupdf renders deterministically), in any process.

The held-out split is never seen in training. Its random streams are disjoint from train's (the
split is part of every stream's key), and so are its content pools: person names, cities,
companies and project code names are split in two (even / odd entries), and numbers, dates and
codes that can be answers are drawn from disjoint residue classes (n % 3 == 1 is held-out). So no
held-out fact answer can occur in training; only formats, templates and generic words are shared.
Answers that are small counts (cross-document "how many" questions) cannot be made disjoint and
are the one exception.

Cost (this 2-core CPU): laying out and rendering a page takes ~30 ms, a whole make_document
~100 ms (1.4 pages on average; a page that spills over is laid out again, smaller or shorter),
plus ~10 ms per page for each tier's LANCZOS downscale. Training therefore reads pages from a
pool rendered once and cached on disk (``build_pool``): canonical PNG + text per page and one
uint8 array per tier, rendered by a process per core. Measured: the CPU run's pool (3,150 items,
3,674 pages, three tiers, 3 GB) took 11 minutes with both cores shared with other jobs, and
loads back (memory-mapped) in under a second.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import io
import json
import math
import multiprocessing
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ingest import (
    content_square,
    crop_words,
    layout_styled_html,
    png_bytes,
    render_pdf_bytes,
    tier_image,
    word_boxes,
)
from ingest.tiers import TIERS, VISION_TIERS

DATA_VERSION = 2  # bump whenever generated pages or facts change: part of streams and cache keys
SPLITS = ("train", "heldout")
LAYOUTS = ("paragraphs", "list", "table", "form", "two_column")
HELDOUT_RESIDUE = 1  # numbers that can be answers: n % 3 == 1 only in held-out, never in train


@dataclass(frozen=True)
class Fact:
    question: str
    answer: str  # short exact answer (a name, number, date, city...)
    page: int  # 1-based page of its document that states it; 0 = needs several documents


@dataclass
class SyntheticPage:
    image: Image.Image  # canonical 1024 x 1024 RGB render, made through ingest's own code
    text: str  # ground-truth text of the page as laid out (what read-back should produce)
    # Every word with its box on the canonical render, (x0, y0, x1, y1, word) in pixels: where
    # the text is, for training's word-presence loss on the vision tokens (train.py).
    words: list[tuple[float, float, float, float, str]] = field(default_factory=list)


@dataclass
class SyntheticDocument:
    seed: int
    split: str
    layout: str  # "paragraphs" | "list" | "table" | "form" | "two_column"
    title: str
    pages: list[SyntheticPage]
    facts: list[Fact]


# ---------------------------------------------------------------------------------------------
# Fonts: pymupdf's built-in ones and DejaVu where the system has it
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FontChoice:
    name: str
    family: str  # CSS font-family
    files: tuple[tuple[str, str], ...] = ()  # (face, path) for TrueType fonts
    width: float = 1.0  # average glyph width relative to Helvetica: how much fits on a page


_DEJAVU_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))


def _dejavu(name: str, stem: str, bold: str, width: float) -> FontChoice | None:
    for folder in _DEJAVU_DIRS:
        regular, strong = folder / f"{stem}.ttf", folder / f"{bold}.ttf"
        if regular.is_file() and strong.is_file():
            files = (("regular", str(regular)), ("bold", str(strong)))
            return FontChoice(name, name, files, width)
    return None


def _fonts() -> tuple[FontChoice, ...]:
    fonts = [
        FontChoice("helvetica", "sans-serif"),
        FontChoice("times", "serif", width=0.92),
        FontChoice("courier", "monospace", width=1.25),
    ]
    for found in (
        _dejavu("dejavu-sans", "DejaVuSans", "DejaVuSans-Bold", 1.12),
        _dejavu("dejavu-serif", "DejaVuSerif", "DejaVuSerif-Bold", 1.15),
        _dejavu("dejavu-sans-condensed", "DejaVuSansCondensed", "DejaVuSansCondensed-Bold", 1.0),
        _dejavu("dejavu-sans-mono", "DejaVuSansMono", "DejaVuSansMono-Bold", 1.25),
    ):
        if found is not None:
            fonts.append(found)
    return tuple(fonts)


FONTS = _fonts()

# ---------------------------------------------------------------------------------------------
# Content pools. Pools whose entries can be answers are split between train and held-out.
# ---------------------------------------------------------------------------------------------

_FIRST_NAMES = """Maria James Aiko Tomas Priya Oliver Fatima Lukas Sofia Daniel Amara Henrik Chen
Isabel Kofi Elena Rahul Grace Mateo Hannah Yusuf Clara Arjun Leila Pablo Ingrid Samuel Noor Felix
Alice Omar Julia Kenji Rosa Viktor Emma Tariq Lucia David Mei Andre Sara Jonas Anika Diego Laura
Hamid Chloe Marco Nadia Peter Yuki Carmen Erik Zara Paolo Helen Ravi Agnes Bruno Ines Malik Freya
Hugo Lina Stefan Ayesha Martin Olga Tobias Rania Simon Beatriz Anton Keiko Nils Amina Victor Eva
Joao Linnea Kwame Irene Fabio Sakura Emil Dalia Gustav Mira Luis Astrid Ahmed Celine""".split()
_LAST_NAMES = """Okafor Lindqvist Tanaka Novak Sharma Bennett Haddad Weber Rossi Cohen Mensah Berg
Wang Moreno Asante Petrova Gupta Walsh Alvarez Fischer Demir Laurent Iyer Karimi Ortega Nilsson
Adeyemi Rahman Brandt Moreau Yilmaz Schmidt Kowalski Costa Ito Larsen Farouk Duarte Keller Santos
Park Olsen Ibrahim Meyer Ferreira Hughes Nakamura Popescu Dubois Jansen Mbeki Fontaine Horvat
Andersson Reyes Kaplan Sato Lopes Varga Hansen Quinn Bauer Ramos Eriksen Costello Abe Silva Marsh
Vogel Pereira Lund Ansari Murphy Richter Gallo Ogawa Kruger Barros Holm Sokolov Frey Mendes Tan
Strand Oyelaran Weiss Castro Kimura Dahl Nowak Baptiste Lang Ruiz Hoffmann Soto""".split()
_CITIES = """Lisbon Osaka Nairobi Toronto Krakow Melbourne Porto Lyon Seville Gothenburg Dublin
Bergen Tallinn Valencia Hamburg Montreal Auckland Kyoto Accra Bilbao Munich Vienna Oslo Zurich
Antwerp Rotterdam Geneva Helsinki Copenhagen Prague Budapest Warsaw Athens Naples Turin Marseille
Bordeaux Leeds Glasgow Cardiff Belfast Boston Denver Austin Seattle Portland Chicago Atlanta
Phoenix Dallas Miami Calgary Ottawa Vancouver Halifax Quebec Monterrey Bogota Lima Santiago
Quito Montevideo Recife Curitiba Durban Lagos Kampala Casablanca Tunis Cairo Amman Doha Muscat
Pune Chennai Jaipur Colombo Dhaka Hanoi Manila Jakarta Perth Adelaide Brisbane Wellington
Sapporo Busan Taipei Shenzhen Chengdu Riga Vilnius Ljubljana Zagreb Sofia Bucharest Malmo Aarhus
Tampere Graz Basel Ghent Utrecht Eindhoven Nantes Lille Florence Bologna Genoa Malaga Granada
Coimbra Cork Galway Aberdeen Bristol""".split()
_COMPANY_WORDS = """Northwind Bluestone Alder Meridian Harbor Silverline Crestview Oakridge
Brightwater Redfern Ironbark Westgate Summit Greenfield Lakeshore Highland Clearwater Stonebridge
Evergreen Riverside Goldleaf Pinecrest Maplewood Seabright Ashford Blackwell Copperfield Driftwood
Eastbrook Fairhaven Granite Hawthorne Juniper Kestrel Larkspur Millbrook Northgate Orchard
Pebblestone Quarry Rosewood Saltmarsh Thornbury Upland Valemont Whitcombe Yarrow Zenith Beacon
Cobalt Delta Ember Falcon Glacier Horizon Indigo Jasper Keystone Lumen Monarch Nimbus Onyx Pioneer
Quartz Radiant Sterling Tidewater Ultramarine Vanguard Willow Amberly Birchwood Cedarline
Dunmore Elmstead Foxglove Greystone Hillcrest Ivywood""".split()
_COMPANY_KINDS = """Logistics Foods Systems Analytics Textiles Energy Pharma Robotics Insurance
Engineering Media Outfitters Instruments Materials Labs Hospitality Consulting Freight Dynamics
Software""".split()
_CODENAMES = """Halcyon Bluebird Corvid Ardent Tamarind Obsidian Marigold Solstice Kingfisher
Lodestar Nightjar Peregrine Sandpiper Tessellate Umbra Verdigris Wayfarer Zephyr Anchorage
Bramble Cinder Dovetail Equinox Firefly Gossamer Hearth Ibis Jubilee Kite Lantern Mistral
Nocturne Osprey Paladin Quill Rampart Saffron Talisman Undertow Vesper Whistler Xylem Yonder
Zodiac Albatross Basilisk Cormorant Daybreak Eclipse Fathom Gryphon Heron Icarus Jackdaw Kelpie
Lynx Mosaic Nautilus Oriole Pelican Quasar Raven Sequoia Thistle Urchin Vireo Wren Yucca Arbor
Bastion Chimera Damask Emberly Fjord Garnet Helix Iris Jade Kittiwake Lattice Monsoon Nebula
Orchid Prism Riddle Sable Tundra""".split()
_HOTELS = """Grand Central Harbourview Parkside Riverside Plaza Station Old Town Lakeside Meridian
Continental Bellevue Panorama""".split()

# Shared vocabulary: never an answer, so train and held-out use the same words.
_TEAMS = (
    """finance operations legal procurement facilities marketing sales engineering
logistics research security training""".split()
    + [
        "customer support",
        "human resources",
        "quality assurance",
        "product design",
    ]
)
_TOPICS = [
    "travel policy", "onboarding checklist", "quarterly budget", "supplier review",
    "safety training", "IT migration", "customer survey", "holiday schedule", "warehouse layout",
    "expense guidelines", "data retention policy", "parking arrangements", "recruitment plan",
    "office move", "audit findings", "pricing update", "maintenance contract", "training calendar",
    "remote work policy", "fleet renewal", "energy savings plan", "visitor registration",
    "printer replacement", "contract renewal", "inventory count", "fire drill", "laptop refresh",
    "mentoring scheme", "canteen menu", "security badge update",
]  # fmt: skip
_ITEMS = [
    "office chairs", "laptop docks", "printer toner", "safety helmets", "desk lamps",
    "network switches", "whiteboards", "storage boxes", "first aid kits", "monitor arms",
    "label printers", "packing tape", "hand trucks", "headsets", "filing cabinets",
    "projector bulbs", "USB cables", "work gloves", "coffee machines", "standing desks",
    "paper reams", "ear protectors", "extension leads", "barcode scanners", "pallet wrap",
]  # fmt: skip
_TASKS = [
    "update the supplier list", "book the training room", "draft the budget proposal",
    "review the insurance quotes", "send the survey to customers", "renew the software licences",
    "collect the signed contracts", "prepare the audit file", "schedule the fire drill",
    "order new safety equipment", "clean up the shared drive", "brief the new interns",
    "publish the holiday rota", "test the backup restore", "check the visitor log",
    "confirm the catering order", "archive last year's invoices", "map the delivery routes",
    "write the onboarding guide", "compare the energy tariffs",
]  # fmt: skip
_EVENTS = ["summer party", "strategy day", "sales conference", "charity run", "innovation fair",
           "leadership offsite", "customer day", "hackathon"]  # fmt: skip
_ROLES = ["Analyst", "Coordinator", "Team Lead", "Specialist", "Manager", "Assistant", "Engineer",
          "Consultant", "Officer", "Administrator"]  # fmt: skip
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]  # fmt: skip
_SEVERITIES = ["low", "moderate", "high"]
_INCIDENTS = ["a minor slip in the loading area", "a power cut on the second floor",
              "a water leak in the server room", "a damaged pallet at goods-in",
              "a broken window in the meeting room", "a forklift near miss"]  # fmt: skip

_FILLER = [
    "The {team} team reviewed the {topic} and agreed to revisit it at the next meeting.",
    "{person} noted that the {topic} had improved since {month}, although several open "
    "questions remain.",
    "Feedback from the {city} site suggests that the {topic} is well understood by most staff.",
    "A short summary of the {topic} will be circulated to all department heads by {weekday}.",
    "Costs related to the {topic} stayed within the approved range for the period.",
    "The committee thanked everyone who contributed to the {topic} during a busy quarter.",
    "Further details are available from the {team} office on request.",
    "Please note that the {topic} applies to all permanent and temporary employees.",
    "No changes to the {topic} are planned before {month}.",
    "{person} will present an update on the {topic} at the {weekday} briefing.",
    "Several colleagues asked whether the {topic} could be simplified; this is under review.",
    "As in previous years, the {topic} was completed with the support of external advisers.",
    "The {team} group expects around {n} requests related to the {topic} this month.",
    "Attendance at the {weekday} sessions was good, and the slides are on the intranet.",
    "Any concerns about the {topic} should be raised with your line manager first.",
    "The {topic} was discussed again in {month}, with broad support from the {team} team.",
    "A pilot in {city} showed that small changes to the {topic} can save time every week.",
    "The next review of the {topic} is expected to take place in {month}.",
    "Staff in {city} reported that the new process is easier to follow than the old one.",
    "{person} asked that all comments on the {topic} be sent in writing by {weekday}.",
    "The figures for {month} are provisional and may change after the final reconciliation.",
    "Work on the {topic} continues, and a progress note will follow in due course.",
    "The {team} department has agreed to share its templates with the other teams.",
    "Around {n} people took part in the discussion about the {topic}.",
    "We would like to thank the {city} team for hosting the session.",
]
_HEADINGS = ["Background", "Summary", "Next steps", "Notes", "Overview", "Progress", "Outlook",
             "Actions", "Discussion", "Updates", "Details", "Remarks"]  # fmt: skip


def _pool(items: list[str], split: str) -> list[str]:
    """The split's half of a pool: even entries for train, odd entries for held-out."""
    _check_split(split)
    return items[0::2] if split == "train" else items[1::2]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _rng(generator: str, seed: int, split: str) -> random.Random:
    _check_split(split)
    return random.Random(f"kb-synth/{DATA_VERSION}/{generator}/{split}/{seed}")


# ---------------------------------------------------------------------------------------------
# Values: everything that can be an answer is drawn from its split's part of the value space
# ---------------------------------------------------------------------------------------------


class _Values:
    """Draws names, numbers, dates and codes for one document of one split."""

    def __init__(self, rng: random.Random, split: str):
        self.rng, self.split = rng, split
        self.used: set[str] = set()  # answers in this document: each appears once
        self.firsts, self.lasts = _pool(_FIRST_NAMES, split), _pool(_LAST_NAMES, split)
        self.cities, self.companies = _pool(_CITIES, split), _pool(_COMPANY_WORDS, split)
        self.codenames = _pool(_CODENAMES, split)

    def _unique(self, draw) -> str:
        for _ in range(100):
            value = draw()
            if value not in self.used:
                self.used.add(value)
                return value
        raise RuntimeError("could not draw a unique value")  # pools are far larger than needed

    def number(self, lo: int, hi: int) -> int:
        want = self.split == "heldout"
        while True:
            n = self.rng.randint(lo, hi)
            if (n % 3 == HELDOUT_RESIDUE) == want:
                return n

    def person(self) -> str:
        return self._unique(lambda: f"{self.rng.choice(self.firsts)} {self.rng.choice(self.lasts)}")

    def city(self) -> str:
        return self._unique(lambda: self.rng.choice(self.cities))

    def company(self) -> str:
        return self._unique(
            lambda: f"{self.rng.choice(self.companies)} {self.rng.choice(_COMPANY_KINDS)}"
        )

    def codename(self) -> str:
        return self._unique(lambda: self.rng.choice(self.codenames))

    def count(self, lo: int, hi: int) -> str:
        return self._unique(lambda: str(self.number(lo, hi)))

    def money(self, lo: int, hi: int) -> str:
        def draw() -> str:
            amount = self.number(lo, hi)
            style = self.rng.randrange(3)
            if style == 0:
                return f"{amount:,} EUR"
            if style == 1:
                return f"${amount:,}"
            return f"GBP {amount:,}"

        return self._unique(draw)

    def date(self, first_year: int = 2019, last_year: int = 2026) -> str:
        lo = datetime.date(first_year, 1, 1).toordinal()
        hi = datetime.date(last_year, 12, 31).toordinal()

        def draw() -> str:
            day = datetime.date.fromordinal(self.number(lo, hi))
            style = self.rng.randrange(3)
            if style == 0:
                return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"
            if style == 1:
                return f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"
            return day.isoformat()

        return self._unique(draw)

    def year(self, lo: int, hi: int) -> str:
        return self._unique(lambda: str(self.number(lo, hi)))

    def time(self) -> str:
        """A departure time on a 5-minute grid; minutes since midnight in the split's class."""

        def draw() -> str:
            while True:
                minutes = self.rng.randrange(6 * 12, 22 * 12) * 5
                if (minutes % 3 == HELDOUT_RESIDUE) == (self.split == "heldout"):
                    return f"{minutes // 60:02d}:{minutes % 60:02d}"

        return self._unique(draw)

    def code(self, prefix: str, digits: int = 5) -> str:
        lo, hi = 10 ** (digits - 1), 10**digits - 1
        return self._unique(lambda: f"{prefix}-{self.number(lo, hi)}")

    # shared words, never answers
    def filler_sentence(self) -> str:
        rng = self.rng
        template = rng.choice(_FILLER)
        return template.format(
            team=rng.choice(_TEAMS),
            topic=rng.choice(_TOPICS),
            person=f"{rng.choice(self.firsts)} {rng.choice(self.lasts)}",
            city=rng.choice(self.cities),
            month=rng.choice(_MONTHS),
            weekday=rng.choice(_WEEKDAYS),
            n=rng.randint(3, 400),
        )


# ---------------------------------------------------------------------------------------------
# Blocks: pieces of HTML, each with the facts it states
# ---------------------------------------------------------------------------------------------


@dataclass
class _Block:
    html: str
    chars: int  # about how many characters of page text it lays out to
    facts: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _visible_chars(markup: str) -> int:
    return len(html.unescape(re.sub(r"<[^>]+>", " ", markup)))


def _block(markup: str, facts: list[tuple[str, str]] | None = None) -> _Block:
    return _Block(markup, _visible_chars(markup), facts or [])


def _paragraph(v: _Values, statements: list[str], facts=None, n_filler=(1, 3)) -> _Block:
    """A paragraph: the statements with filler sentences around them."""
    sentences = [v.filler_sentence() for _ in range(v.rng.randint(*n_filler))]
    for statement in statements:
        sentences.insert(v.rng.randint(0, len(sentences)), statement)
    return _block(f"<p>{_esc(' '.join(sentences))}</p>", facts)


def _bullets(v: _Values, items: list[str], facts=None, ordered: bool = False) -> _Block:
    tag = "ol" if ordered else "ul"
    body = "".join(f"<li>{_esc(item)}</li>" for item in items)
    return _block(f"<{tag}>{body}</{tag}>", facts)


def _table(header: list[str], rows: list[list[str]], facts=None) -> _Block:
    head = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return _block(f"<table>{head}{body}</table>", facts)


def _fields(v: _Values, pairs: list[tuple[str, str]], facts=None) -> _Block:
    """Key-value pairs of a form: a two-column table or "Key: value" lines."""
    if v.rng.random() < 0.5:
        rows = "".join(
            f"<tr><td><b>{_esc(k)}</b></td><td>{_esc(val)}</td></tr>" for k, val in pairs
        )
        return _block(f"<table>{rows}</table>", facts)
    lines = "".join(f"<p><b>{_esc(k)}:</b> {_esc(val)}</p>" for k, val in pairs)
    return _block(f"<div>{lines}</div>", facts)


def _heading(text: str, level: int = 2) -> _Block:
    return _block(f"<h{level}>{_esc(text)}</h{level}>")


def _filler_blocks(v: _Values, layout: str) -> Iterator[_Block]:
    """Endless realistic content stating no fact, in the layout's own style."""
    rng = v.rng
    while True:
        if rng.random() < 0.2:
            yield _heading(rng.choice(_HEADINGS))
        if layout == "list":
            yield _bullets(v, [v.filler_sentence() for _ in range(rng.randint(2, 5))])
        elif layout == "table" and rng.random() < 0.5:
            rows = [
                [rng.choice(_WEEKDAYS), rng.choice(_TOPICS).capitalize(), rng.choice(_TEAMS)]
                for _ in range(rng.randint(3, 6))
            ]
            yield _table(["Day", "Topic", "Team"], rows)
        elif layout == "form" and rng.random() < 0.4:
            pairs = [
                ("Reviewed by", rng.choice(_TEAMS)),
                ("Status", rng.choice(["open", "closed", "pending", "in review"])),
                ("Comments", v.filler_sentence()),
            ]
            yield _fields(v, pairs)
        else:
            yield _paragraph(v, [], n_filler=(2, 5))


# ---------------------------------------------------------------------------------------------
# Document kinds: title, the blocks that state facts, in order
# ---------------------------------------------------------------------------------------------


def _office_report(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    company, city, manager = v.company(), v.city(), v.person()
    quarter = f"Q{rng.randint(1, 4)} {rng.randint(2019, 2026)}"
    revenue, staff, opened = v.money(200_000, 9_000_000), v.count(12, 480), v.year(1961, 2022)
    customers = v.count(50, 5000)
    where = f"the {company} office in {city}"
    blocks = [
        _paragraph(
            v,
            [f"The {city} office of {company} is managed by {manager}."],
            [(f"Who manages {where}?", manager)],
        ),
        _paragraph(
            v,
            [f"Revenue for {quarter} reached {revenue}, in line with the plan."],
            [(f"What revenue did {where} report for {quarter}?", revenue)],
        ),
        _heading(rng.choice(["People", "Staff", "Team"])),
        _paragraph(
            v,
            [f"At the end of the quarter the office employed {staff} people."],
            [(f"How many people does {where} employ?", staff)],
        ),
        _paragraph(
            v,
            [
                f"The office first opened in {opened}.",
                f"It now serves {customers} active customers.",
            ],
            [
                (f"In which year did {where} open?", opened),
                (f"How many active customers does {where} serve?", customers),
            ],
        ),
    ]
    return f"{company}: {city} office, quarterly report {quarter}", blocks


def _memo(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    sender, contact = v.person(), v.person()
    topic, team = rng.choice(_TOPICS), rng.choice(_TEAMS)
    sent, effective, ext = v.date(), v.date(), v.count(1000, 9999)
    header = _fields(
        v,
        [("From", sender), ("To", f"All {team} staff"), ("Date", sent), ("Subject", topic)],
        [(f"Who sent the memo about the {topic} dated {sent}?", sender)],
    )
    blocks = [
        header,
        _paragraph(
            v,
            [f"The new {topic} takes effect on {effective}."],
            [(f"According to {sender}'s memo, when does the new {topic} take effect?", effective)],
        ),
        _paragraph(
            v,
            [f"Questions should be directed to {contact} at extension {ext}."],
            [
                (f"Who should questions about {sender}'s {topic} memo go to?", contact),
                (f"Which extension is given in {sender}'s memo on the {topic}?", ext),
            ],
        ),
    ]
    return f"Memo: {topic}", blocks


def _letter(v: _Values) -> tuple[str, list[_Block]]:
    company, customer, city = v.company(), v.person(), v.city()
    order, tracking, shipped = v.code("ORD"), v.code("TRK", 7), v.date()
    blocks = [
        _block(f"<p>Dear {_esc(customer)},</p>"),
        _paragraph(
            v,
            [
                f"Your order {order} left our {city} warehouse on {shipped}.",
                f"Its tracking number is {tracking}.",
            ],
            [
                (f"From which city was order {order} shipped?", city),
                (f"When was order {order} shipped?", shipped),
                (f"What is the tracking number of order {order}?", tracking),
            ],
            n_filler=(0, 1),
        ),
        _block(f"<p>Kind regards,<br>{_esc(company)} customer service</p>"),
    ]
    return f"{company}: shipping confirmation", blocks


def _newsletter(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    company, city, hire, team = v.company(), v.city(), v.person(), rng.choice(_TEAMS)
    bays, event, venue, day = v.count(4, 90), rng.choice(_EVENTS), v.city(), v.date()
    blocks = [
        _heading(f"New warehouse in {city}"),
        _paragraph(
            v,
            [f"{company} has opened a warehouse in {city} with {bays} loading bays."],
            [(f"How many loading bays does the new {company} warehouse in {city} have?", bays)],
        ),
        _heading("Welcome"),
        _paragraph(
            v,
            [f"We welcome {hire}, who joins {company} as head of {team}."],
            [(f"Who joined {company} as head of {team}?", hire)],
        ),
        _heading(f"Annual {event}"),
        _paragraph(
            v,
            [f"This year's {event} will take place in {venue} on {day}."],
            [
                (f"Where will the {company} {event} take place?", venue),
                (f"On what date is the {company} {event}?", day),
            ],
        ),
    ]
    return f"{company} newsletter", blocks


def _meeting_notes(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    team, day = rng.choice(_TEAMS), v.date()
    people = [v.person() for _ in range(rng.randint(3, 5))]
    tasks = rng.sample(_TASKS, 3)
    owners = [v.person() for _ in tasks]
    dues = [v.date() for _ in tasks]
    topic, budget = rng.choice(_TOPICS), v.money(1_000, 250_000)
    where = f"the {team} meeting of {day}"
    action_facts = []
    for task, owner, due in zip(tasks, owners, dues, strict=True):
        action_facts.append((f"Who was asked to {task} at {where}?", owner))
        action_facts.append((f"By when must {owner} {task}?", due))
    blocks = [
        _block(f"<p><b>Attendees:</b> {_esc(', '.join(people))}</p>"),
        _heading("Decisions"),
        _bullets(
            v,
            [f"Budget for the {topic} approved at {budget}.", v.filler_sentence()],
            [(f"What budget was approved for the {topic} at {where}?", budget)],
        ),
        _heading("Action items"),
        _bullets(
            v,
            [f"{o} to {t} by {d}." for t, o, d in zip(tasks, owners, dues, strict=True)],
            action_facts,
            ordered=rng.random() < 0.5,
        ),
    ]
    return f"{team.capitalize()} meeting notes, {day}", blocks


def _itinerary(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    traveller, origin, dest = v.person(), v.city(), v.city()
    flight = f"{rng.choice(['KL', 'LH', 'TP', 'AF', 'BA', 'SK', 'IB'])}{v.number(100, 9999)}"
    departs, day, confirmation = v.time(), v.date(), v.code("HTL", 6)
    hotel = f"Hotel {rng.choice(_HOTELS)}"
    blocks = [
        _heading("Flights"),
        _bullets(
            v,
            [
                f"Flight {flight} from {origin} to {dest} departs at {departs} on {day}.",
                "Check-in closes 45 minutes before departure.",
            ],
            [
                (f"What time does flight {flight} depart?", departs),
                (f"Where does {traveller}'s flight {flight} land?", dest),
            ],
        ),
        _heading("Accommodation"),
        _bullets(
            v,
            [f"{hotel}, {dest}: confirmation number {confirmation}.", v.filler_sentence()],
            [(f"What is the hotel confirmation number for {traveller}'s trip?", confirmation)],
        ),
    ]
    return f"Travel itinerary for {traveller}", blocks


def _invoice(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    vendor, customer, number, due = v.company(), v.company(), v.code("INV"), v.date()
    items = rng.sample(_ITEMS, rng.randint(3, 7))
    rows, facts, total = [], [], 0
    for item in items:
        qty, price = int(v.count(1, 400)), v.number(3, 900)
        total += qty * price
        rows.append([item.capitalize(), str(qty), f"{price:,}.00", f"{qty * price:,}.00"])
        facts.append((f"How many {item} are billed on invoice {number}?", str(qty)))
    total_text = f"EUR {total:,}.00"
    blocks = [
        _fields(
            v,
            [
                ("Invoice number", number),
                ("Vendor", vendor),
                ("Customer", customer),
                ("Due date", due),
            ],  # fmt: skip
            [
                (f"Which company issued invoice {number}?", vendor),
                (f"What is the due date of invoice {number}?", due),
            ],  # fmt: skip
        ),
        _table(["Item", "Qty", "Unit price", "Amount"], rows, facts),
        _block(
            f"<p><b>Total due: {total_text}</b></p>",
            [(f"What is the total due on invoice {number}?", total_text)],
        ),
    ]
    return f"Invoice {number}", blocks


def _staff_table(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    company, team = v.company(), rng.choice(_TEAMS)
    rows, facts = [], []
    for _ in range(rng.randint(4, 9)):
        name, city, ext = v.person(), v.city(), v.count(1000, 9999)
        rows.append([name, rng.choice(_ROLES), city, ext])
        facts.append((f"What is {name}'s phone extension at {company}?", ext))
        facts.append((f"In which office does {company}'s {name} work?", city))
    blocks = [_table(["Name", "Role", "Office", "Extension"], rows, facts)]
    return f"{company} staff directory: {team}", blocks


def _shipments(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    company = v.company()
    rows, facts = [], []
    for _ in range(rng.randint(4, 9)):
        ident, origin, dest = v.code("SHP"), v.city(), v.city()
        weight, day = f"{v.count(5, 9000)} kg", v.date()
        rows.append([ident, origin, dest, weight, day])
        facts.append((f"What is the destination of shipment {ident}?", dest))
        facts.append((f"How much does shipment {ident} weigh?", weight))
    blocks = [_table(["Shipment", "From", "To", "Weight", "Date"], rows, facts)]
    return f"{company} shipment log", blocks


def _hr_form(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    name, ident, start, manager, city = v.person(), v.code("E"), v.date(), v.person(), v.city()
    ext = v.count(1000, 9999)
    pairs = [
        ("Employee name", name),
        ("Employee ID", ident),
        ("Department", rng.choice(_TEAMS).capitalize()),
        ("Position", rng.choice(_ROLES)),
        ("Start date", start),
        ("Manager", manager),
        ("Office", city),
        ("Phone extension", ext),
    ]
    facts = [
        (f"What is the employee ID of {name}?", ident),
        (f"When did {name} start?", start),
        (f"Who is {name}'s manager?", manager),
        (f"Which office is {name} based in?", city),
        (f"What is {name}'s phone extension?", ext),
    ]
    return "Employee details form", [_fields(v, pairs, facts)]


def _expense_claim(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    claimant, number, amount, approver = v.person(), v.code("EXP"), v.money(20, 9000), v.person()
    submitted = v.date()
    pairs = [
        ("Claimant", claimant),
        ("Claim number", number),
        ("Date submitted", submitted),
        ("Purpose", rng.choice(_TOPICS)),
        ("Amount", amount),
        ("Approved by", approver),
    ]
    facts = [
        (f"What amount is claimed on expense claim {number}?", amount),
        (f"Who approved expense claim {number}?", approver),
        (f"Who submitted expense claim {number}?", claimant),
    ]
    return "Expense claim", [_fields(v, pairs, facts)]


def _incident_report(v: _Values) -> tuple[str, list[_Block]]:
    rng = v.rng
    number, day, city, reporter = v.code("INC"), v.date(), v.city(), v.person()
    pairs = [
        ("Report number", number),
        ("Date of incident", day),
        ("Site", city),
        ("Reported by", reporter),
        ("Severity", rng.choice(_SEVERITIES)),
    ]
    facts = [
        (f"Who reported incident {number}?", reporter),
        (f"At which site did incident {number} happen?", city),
        (f"On what date did incident {number} occur?", day),
    ]
    what = rng.choice(_INCIDENTS)
    blocks = [
        _fields(v, pairs, facts),
        _paragraph(v, [f"The report describes {what}."], n_filler=(1, 2)),
    ]
    return "Incident report", blocks


_KINDS = {
    "paragraphs": (_office_report, _memo, _letter),
    "two_column": (_newsletter, _office_report, _memo),
    "list": (_meeting_notes, _itinerary),
    "table": (_invoice, _staff_table, _shipments),
    "form": (_hr_form, _expense_claim, _incident_report),
}

# ---------------------------------------------------------------------------------------------
# Pages: blocks -> one HTML fragment per page -> ingest layout and render
# ---------------------------------------------------------------------------------------------

_FULL_PAGE_CHARS = 4400  # text of a full A4 page of 11 pt Helvetica prose at line-height 1.3
_LAYOUT_FILL = {"paragraphs": 0.9, "two_column": 0.95, "list": 0.8, "table": 0.55, "form": 0.6}


@dataclass(frozen=True)
class _Style:
    font: FontChoice
    size: float
    line_height: float
    columns: int


def _choose_style(rng: random.Random, layout: str, target_chars: int) -> _Style:
    """A random font and size (9-14 pt), made smaller when the target would not fit."""
    font = rng.choice(FONTS)
    size = rng.choice([9, 9.5, 10, 10.5, 11, 11.5, 12, 13, 14])
    line_height = rng.choice([1.2, 1.3, 1.4])

    def capacity(size: float, line_height: float) -> float:
        scale = (11 / size) ** 2 * (1.3 / line_height) / font.width
        return _FULL_PAGE_CHARS * scale * _LAYOUT_FILL[layout]

    while capacity(size, line_height) < 1.1 * target_chars and size > 9:
        size -= 0.5
    while capacity(size, line_height) < 1.1 * target_chars and line_height > 1.15:
        line_height = round(line_height - 0.05, 2)
    while capacity(size, line_height) < 1.1 * target_chars and size > 7.5:
        size -= 0.5  # only very long targets (Fox's longest bucket in Courier) get here
    return _Style(font, size, line_height, 2 if layout == "two_column" else 1)


def _render(fragments: list[str], style: _Style) -> list[SyntheticPage]:
    pdf = layout_styled_html(
        [f'<div style="line-height: {style.line_height}">{f}</div>' for f in fragments],
        font_family=style.font.family,
        font_size=style.size,
        columns=style.columns,
        font_files=dict(style.font.files) or None,
    )
    boxes = word_boxes(pdf)
    return [
        SyntheticPage(image=p.image, text=p.text, words=w)
        for p, w in zip(render_pdf_bytes(pdf), boxes, strict=True)
    ]


def _normalize(text: str) -> str:
    return " ".join(text.split())


def _compose(
    style: _Style, pages_blocks: list[list[_Block]], shrink: bool = False
) -> tuple[list[SyntheticPage], list[list[_Block]]]:
    """Render each page's blocks from the top of its own page. A page whose blocks spill over
    is set smaller (``shrink``: the length was asked for, down to 7.5 pt) or else loses its last
    blocks until it fits. Returns the pages and the blocks each one kept."""
    pages: list[SyntheticPage] = []
    kept: list[list[_Block]] = []
    for blocks in pages_blocks:
        blocks = list(blocks)
        page_style = style
        while True:
            rendered = _render(["".join(b.html for b in blocks)], page_style)
            if len(rendered) == 1 or len(blocks) == 1:
                break
            if shrink and page_style.size > 7.5:
                page_style = replace(page_style, size=page_style.size - 0.5)
                continue
            # Drop the last block that states no fact; the last block if all of them do.
            plain = [i for i, b in enumerate(blocks) if not b.facts and i > 0]
            blocks.pop(plain[-1] if plain else -1)
        pages.append(rendered[0])
        kept.append(blocks)
    return pages, kept


def _page_facts(pages: list[SyntheticPage], kept: list[list[_Block]]) -> list[Fact]:
    """Facts whose answer really is on the page that states them (whitespace-normalized)."""
    facts, seen = [], set()
    for number, (page, blocks) in enumerate(zip(pages, kept, strict=True), start=1):
        text = _normalize(page.text)
        for block in blocks:
            for question, answer in block.facts:
                if _normalize(answer) in text and question not in seen:
                    seen.add(question)
                    facts.append(Fact(question, answer, number))
    return facts


def _page_target(rng: random.Random, target_chars: int | None) -> int:
    if target_chars is not None:
        if target_chars < 50:
            raise ValueError(f"target_chars must be at least 50, got {target_chars}")
        return target_chars
    return int(math.exp(rng.uniform(math.log(500), math.log(3600))))  # short pages to full ones


def _fill(blocks: Iterator[_Block], first: list[_Block], target: int) -> list[_Block]:
    """``first`` then blocks from ``blocks`` until the page's text reaches about ``target``."""
    page = list(first)
    total = sum(b.chars for b in page)
    while total < target:
        block = next(blocks)
        page.append(block)
        total += block.chars
    return page


def _spread(rng: random.Random, fact_blocks: list[_Block], filler: Iterator[_Block], target: int):
    """Fact blocks in order, with filler blocks between them, up to about ``target`` chars."""
    fact_chars = sum(b.chars for b in fact_blocks)
    budget = max(target - fact_chars, 0)
    n_filler = 0
    fillers: list[_Block] = []
    while sum(b.chars for b in fillers) < budget:
        fillers.append(next(filler))
        n_filler += 1
    slots = sorted(rng.randint(0, len(fact_blocks)) for _ in fillers)
    out, j = [], 0
    for i, block in enumerate(fact_blocks):
        while j < len(slots) and slots[j] <= i:
            out.append(fillers[j])
            j += 1
        out.append(block)
    out.extend(fillers[j:])
    return out


def make_document(
    seed: int,
    split: str = "train",
    max_pages: int = 2,
    target_chars: int | None = None,
    *,
    layout: str | None = None,
) -> SyntheticDocument:
    """A synthetic document of 1..max_pages pages with facts, deterministic in (seed, split).

    ``target_chars``: about how much text each page holds (the style shrinks to fit long targets;
    ~5,200 is a dense page in 9 pt). ``layout``: force one of LAYOUTS (default: drawn).
    """
    if max_pages < 1:
        raise ValueError(f"max_pages must be at least 1, got {max_pages}")
    rng = _rng("document", seed, split)
    layout = layout or rng.choice(LAYOUTS)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    v = _Values(rng, split)
    title, fact_blocks = rng.choice(_KINDS[layout])(v)
    n_pages = rng.randint(1, max_pages)
    targets = [_page_target(rng, target_chars) for _ in range(n_pages)]
    style = _choose_style(rng, layout, max(targets))
    filler = _filler_blocks(v, layout)
    head = _block(f"<h1>{_esc(title)}</h1>")
    # The facts go on the first page (spread between filler); later pages continue the document.
    first = _spread(rng, fact_blocks, filler, targets[0] - head.chars)
    pages_blocks = [[head, *first]]
    for target in targets[1:]:
        pages_blocks.append(_fill(filler, [], target))
    if n_pages > 1 and len(fact_blocks) > 1 and rng.random() < 0.5:
        # Half the multi-page documents state some of their facts on the last page instead.
        moved = fact_blocks[len(fact_blocks) // 2 :]
        pages_blocks[0] = [b for b in pages_blocks[0] if all(b is not m for m in moved)]
        at = rng.randint(0, len(pages_blocks[-1]))
        pages_blocks[-1] = pages_blocks[-1][:at] + moved + pages_blocks[-1][at:]
    pages, kept = _compose(style, pages_blocks, shrink=target_chars is not None)
    return SyntheticDocument(seed, split, layout, title, pages, _page_facts(pages, kept))


# ---------------------------------------------------------------------------------------------
# Needles, fillers, cross-document sets
# ---------------------------------------------------------------------------------------------

_NEEDLES = [
    ("The {project} project is led by {person}.", "Who leads the {project} project?", "person"),
    ("The kickoff meeting for the {project} project is set for {date}.",
     "When is the kickoff meeting for the {project} project?", "date"),
    ("The {project} project has been given a budget of {money}.",
     "What is the budget of the {project} project?", "money"),
    ("The {project} project team is based in {city}.",
     "In which city is the {project} project team based?", "city"),
    ("The access code for the {project} archive is {code}.",
     "What is the access code for the {project} archive?", "code"),
    ("The {project} review takes place in room {room}.",
     "In which room does the {project} review take place?", "room"),
    ("The {project} prototype weighs {weight}.", "How much does the {project} prototype weigh?",
     "weight"),
]  # fmt: skip


def filler_page(seed: int, split: str = "train") -> SyntheticPage:
    """One realistic page (any layout) that states no fact a needle uses: needles are about
    projects with code names, which no document or filler ever mentions."""
    rng = _rng("filler", seed, split)
    layout = rng.choice(LAYOUTS)
    v = _Values(rng, split)
    target = _page_target(rng, None)
    style = _choose_style(rng, layout, target)
    title, fact_blocks = rng.choice(_KINDS[layout])(v)
    blocks = _spread(rng, fact_blocks, _filler_blocks(v, layout), target)
    pages, _ = _compose(style, [[_block(f"<h1>{_esc(title)}</h1>"), *blocks]])
    return pages[0]


_CODE_LINE = re.compile(r"^\s{2,}\S|[{};]\s*$|^\s*(?:\$|>>>|#include|def |class |import )")


def _real_block(chunk: str) -> _Block:
    """One paragraph of real text: a short first line alone is a heading; a paragraph of
    indented or code-like lines keeps its lines, in the monospace font; prose flows."""
    lines = [ln.rstrip() for ln in chunk.strip("\n").splitlines() if ln.strip()]
    if len(lines) == 1 and len(lines[0]) < 60 and not lines[0].rstrip().endswith((".", ":")):
        return _block(f"<h2>{_esc(lines[0].strip())}</h2>")
    if sum(bool(_CODE_LINE.search(ln)) for ln in lines) * 2 >= len(lines):
        body = "<br/>".join(_esc(ln).replace("  ", "&nbsp; ") for ln in lines)
        return _block(f'<p style="font-family: monospace">{body}</p>')
    return _block(f"<p>{_esc(' '.join(ln.strip() for ln in lines))}</p>")


def real_page(seed: int, split: str = "train") -> SyntheticPage:
    """A page of real technical prose the project did not write (lab.realtext: the READMEs and
    docstrings that ship on the machine, less anything evaluated on), in a random font, size and
    layout: identifiers, options, paths and code listings, which real manuals hold and the office
    documents above do not. It states no fact."""
    from lab import realtext

    rng = _rng("real", seed, split)
    text = rng.choice(realtext.split_pages(split))
    layout = rng.choice(("paragraphs", "paragraphs", "two_column"))
    style = _choose_style(rng, layout, len(text))
    blocks = [_real_block(c) for c in re.split(r"\n\s*\n", text) if c.strip()]
    pages, _ = _compose(style, [blocks])
    return pages[0]


def needle_fact(rng: random.Random, v: _Values) -> tuple[str, str, str]:
    """One needle: (statement, question, answer) about a project with a code name."""
    statement, question, kind = rng.choice(_NEEDLES)
    project = v.codename()
    answer = {
        "person": v.person,
        "date": v.date,
        "money": lambda: v.money(5_000, 5_000_000),
        "city": v.city,
        "code": lambda: v.code(rng.choice(["AX", "KC", "QZ", "RT"]), 6),
        "room": lambda: f"{rng.choice('ABCDEFG')}{v.count(100, 999)}",
        "weight": lambda: f"{v.count(2, 950)} kg",
    }[kind]()
    return (
        statement.format(project=project, **{kind: answer}),
        question.format(project=project),
        answer,
    )


def needle_page(seed: int, split: str = "train") -> tuple[SyntheticPage, Fact]:
    """A page of filler text with exactly one unique fact (the needle) at a random depth."""
    rng = _rng("needle", seed, split)
    layout = rng.choice(LAYOUTS)
    v = _Values(rng, split)
    target = _page_target(rng, None)
    style = _choose_style(rng, layout, target)
    statement, question, answer = needle_fact(rng, v)
    filler = _filler_blocks(v, layout)
    head = _block(f"<h1>{_esc(rng.choice(_HEADINGS))}</h1>")
    for _ in range(10):  # a needle that falls off the page is placed again, nearer the top
        blocks = _fill(filler, [], max(target - 200, 100))
        needle = (
            _bullets(v, [statement, v.filler_sentence()], [(question, answer)])
            if layout == "list"
            else _paragraph(v, [statement], [(question, answer)], n_filler=(1, 2))
        )
        blocks.insert(rng.randint(0, len(blocks)), needle)
        pages, kept = _compose(style, [[head, *blocks]])
        facts = _page_facts(pages, kept)
        if facts:
            return pages[0], facts[0]
        target = max(target // 2, 200)
    raise RuntimeError(f"needle {seed} ({split}) does not fit on a page")


@dataclass
class _Office:
    city: str
    staff: int
    revenue: int
    opened: int
    manager: str


def cross_document_set(
    seed: int, split: str = "train", n_docs: int = 5
) -> tuple[list[SyntheticDocument], list[Fact]]:
    """One page per office of one company (staff, revenue, opening year, manager, in varied
    layouts), and questions that need several of them: counts, comparisons, superlatives, sums.
    Each document keeps its own single-page facts; the returned facts have page = 0."""
    if n_docs < 2:
        raise ValueError(f"a cross-document set needs at least 2 documents, got {n_docs}")
    rng = _rng("cross", seed, split)
    v = _Values(rng, split)
    company = v.company()
    staff_values = sorted(rng.sample(range(10, 400), n_docs))  # distinct: no ties to break
    rng.shuffle(staff_values)
    offices = [
        _Office(
            city=v.city(),
            staff=staff,
            revenue=v.number(100, 9_000) * 1000,
            opened=v.number(1970, 2022),
            manager=v.person(),
        )
        for staff in staff_values
    ]
    docs = []
    for office in offices:
        layout = rng.choice(("paragraphs", "form", "list", "table"))
        city = office.city
        title = f"{company}: {city} office, annual summary"
        revenue = f"EUR {office.revenue:,}"
        facts = [
            (f"How many staff does the {company} office in {city} have?", str(office.staff)),
            (f"Who manages the {company} office in {city}?", office.manager),
        ]
        if layout == "paragraphs":
            stated = _paragraph(
                v,
                [
                    f"The {city} office has {office.staff} staff and is managed by "
                    f"{office.manager}.",
                    f"It opened in {office.opened} and had revenue of {revenue} last year.",
                ],
                facts,
            )
        elif layout == "list":
            stated = _bullets(
                v,
                [
                    f"Staff: {office.staff}",
                    f"Manager: {office.manager}",
                    f"Opened: {office.opened}",
                    f"Revenue last year: {revenue}",
                ],
                facts,
            )
        elif layout == "table":
            stated = _table(
                ["Office", "Staff", "Opened", "Revenue", "Manager"],
                [
                    [city, str(office.staff), str(office.opened), revenue, office.manager]
                ],  # fmt: skip
                facts,
            )
        else:
            stated = _fields(
                v,
                [("Office", city), ("Staff", str(office.staff)), ("Manager",
                 office.manager), ("Opened", str(office.opened)), ("Revenue", revenue)],
                facts,
            )  # fmt: skip
        target = rng.randint(500, 1800)
        style = _choose_style(rng, layout, target)
        blocks = [_block(f"<h1>{_esc(title)}</h1>"), stated]
        blocks += _fill(_filler_blocks(v, layout), [], target - stated.chars)
        pages, kept = _compose(style, [blocks])
        docs.append(SyntheticDocument(seed, split, layout, title, pages, _page_facts(pages, kept)))

    cities = [o.city for o in offices]
    by_staff = sorted(offices, key=lambda o: o.staff)
    threshold = rng.choice(staff_values[:-1]) + 1 if n_docs > 2 else staff_values[0] + 1
    a, b = rng.sample(offices, 2)
    cross = [
        Fact(
            f"How many {company} offices have more than {threshold - 1} staff?",
            str(sum(o.staff > threshold - 1 for o in offices)),
            0,
        ),
        Fact(
            f"Which {company} office has more staff, {a.city} or {b.city}?",
            max(a, b, key=lambda o: o.staff).city,
            0,
        ),
        Fact(f"Which {company} office has the most staff?", by_staff[-1].city, 0),
        Fact(f"Which {company} office has the fewest staff?", by_staff[0].city, 0),
        Fact(
            f"Which {company} office had the highest revenue last year?",
            max(offices, key=lambda o: o.revenue).city,
            0,
        ),
        Fact(
            f"What is the combined staff of the {company} offices in {a.city} and {b.city}?",
            str(a.staff + b.staff),
            0,
        ),
        Fact(f"How many offices does {company} have?", str(len(cities)), 0),
    ]
    return docs, cross


# ---------------------------------------------------------------------------------------------
# The training pool: many pages rendered once, cached on disk, loaded as per-tier uint8 arrays
# ---------------------------------------------------------------------------------------------


@dataclass
class PoolSpec:
    """What a pool holds; its JSON (with the data version) names the cache directory."""

    split: str = "train"
    documents: int = 1000  # make_document seeds 0..documents-1
    needles: int = 1000
    fillers: int = 500
    cross_sets: int = 200
    real: int = 0  # pages of real technical prose (real_page)
    max_pages: int = 2
    first_seed: int = 0  # shift seeds to build a second, disjoint pool of the same split
    # Page text lengths of documents: None = make_document's own mix (500-3600 chars); a pair
    # (lo, hi) draws target_chars log-uniformly in it (short pages first on a CPU, say).
    target_chars: tuple[int, int] | None = None

    def key(self) -> str:
        # The tiers that crop (ingest.tiers) change what the tier arrays hold, not the pages.
        cropped = [t.name for t in VISION_TIERS if t.crop]
        blob = json.dumps({"v": DATA_VERSION, **asdict(self), "crop": cropped}, sort_keys=True)
        return f"{self.split}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class PoolItem:
    kind: str  # "document" | "needle" | "filler" | "cross" | "real"
    seed: int
    pages: list[int]  # indices into Pool.texts / Pool.tiers[...]
    facts: list[tuple[str, str, int]]  # (question, answer, pool page index or -1 = several)


@dataclass
class Pool:
    spec: PoolSpec
    texts: list[str]  # per pool page
    words: list[list[Any]]  # per pool page: SyntheticPage.words ([] for pools built before)
    squares: list[tuple[int, int, int]]  # per pool page: its content_square (cropping tiers)
    tiers: dict[str, np.ndarray]  # tier -> (n_pages, S, S) uint8 grayscale at the tier's size
    items: list[PoolItem]

    def tier_words(self, page: int, tier: str) -> list:
        """A page's word boxes where ``tier``'s image puts them, in canonical pixels: a cropping
        tier shows the page's content square (ingest.tier_image) scaled to the canonical size."""
        words = self.words[page]
        return crop_words(words, self.squares[page]) if TIERS[tier].crop else words


def _pool_job(job: tuple[str, int, PoolSpec, tuple[str, ...]]) -> dict[str, Any]:
    kind, seed, spec, tiers = job
    split = spec.split
    if kind == "document":
        target = None
        if spec.target_chars is not None:
            lo, hi = spec.target_chars
            r = _rng("pool-target", seed, split)
            target = int(math.exp(r.uniform(math.log(lo), math.log(hi))))
        doc = make_document(seed, split, spec.max_pages, target)
        pages = doc.pages
        facts = [(f.question, f.answer, f.page - 1) for f in doc.facts]
    elif kind == "needle":
        page, fact = needle_page(seed, split)
        pages, facts = [page], [(fact.question, fact.answer, 0)]
    elif kind == "filler":
        pages, facts = [filler_page(seed, split)], []
    elif kind == "real":
        pages, facts = [real_page(seed, split)], []
    elif kind == "cross":
        n_docs = _rng("pool-cross", seed, split).randint(3, 6)
        docs, cross = cross_document_set(seed, split, n_docs)
        pages = [d.pages[0] for d in docs]
        facts = [(f.question, f.answer, -1) for f in cross]
        facts += [(f.question, f.answer, i) for i, d in enumerate(docs) for f in d.facts]
    else:
        raise ValueError(kind)
    arrays = {
        tier: [np.asarray(tier_image(p.image, tier).convert("L"), dtype=np.uint8) for p in pages]
        for tier in tiers
    }
    return {
        "kind": kind,
        "seed": seed,
        "png": [png_bytes(p.image) for p in pages],
        "texts": [p.text for p in pages],
        "words": [p.words for p in pages],
        "squares": [content_square(p.image) for p in pages],
        "facts": facts,
        "arrays": arrays,
    }


TIER_SIZES = {tier.name: tier.size for tier in VISION_TIERS}  # ingest.tiers: the one table


def build_pool(
    spec: PoolSpec,
    cache_dir: str | Path,
    tiers: tuple[str, ...] = ("gist", "tiny", "small", "base"),
    workers: int = 2,
    log=print,
) -> Pool:
    """Render the pool once (a process per worker) into ``cache_dir/<spec key>/``, or load it.

    On disk: ``pages/<i>.png`` (canonical renders), ``texts.json``, ``items.json`` and one raw
    ``<tier>.u8`` file per tier, (n_pages, S, S) uint8, memory-mapped on load (a GPU pool of
    15,000 pages with every tier is ~26 GB). A pool asked for with more tiers than it was built
    with is rebuilt.
    """
    folder = Path(cache_dir) / spec.key()
    done = folder / "done.json"
    if done.is_file() and set(tiers) <= set(json.loads(done.read_text())["tiers"]):
        return _load_pool(spec, folder, tiers)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pages").mkdir(exist_ok=True)
    f0 = spec.first_seed
    jobs = [("document", f0 + s, spec, tiers) for s in range(spec.documents)]
    jobs += [("needle", f0 + s, spec, tiers) for s in range(spec.needles)]
    jobs += [("filler", f0 + s, spec, tiers) for s in range(spec.fillers)]
    jobs += [("cross", f0 + s, spec, tiers) for s in range(spec.cross_sets)]
    jobs += [("real", f0 + s, spec, tiers) for s in range(spec.real)]
    random.Random(0).shuffle(jobs)  # mix cheap and dear jobs across workers
    texts: list[str] = []
    words: list[Any] = []
    squares: list[Any] = []
    items: list[PoolItem] = []
    # Tier arrays are appended to raw files as they come: a big pool never sits in RAM whole.
    raws = {tier: open(folder / f"{tier}.u8", "wb") for tier in tiers}
    ctx = multiprocessing.get_context("spawn" if workers > 1 else None)
    try:
        with ctx.Pool(workers) if workers > 1 else _Serial() as pool:
            for n, result in enumerate(pool.imap(_pool_job, jobs, chunksize=8)):
                first = len(texts)
                for i, png in enumerate(result["png"]):
                    (folder / "pages" / f"{first + i}.png").write_bytes(png)
                texts.extend(result["texts"])
                words.extend(result["words"])
                squares.extend(result["squares"])
                for tier in tiers:
                    for array in result["arrays"][tier]:
                        raws[tier].write(array.tobytes())
                page_ids = list(range(first, len(texts)))
                facts = [(q, a, page_ids[p] if p >= 0 else -1) for q, a, p in result["facts"]]
                items.append(PoolItem(result["kind"], result["seed"], page_ids, facts))
                if (n + 1) % 200 == 0:
                    log(f"pool {spec.key()}: {n + 1}/{len(jobs)} items, {len(texts)} pages")
    finally:
        for raw in raws.values():
            raw.close()
    (folder / "texts.json").write_text(json.dumps(texts))
    (folder / "words.json").write_text(json.dumps(words))
    (folder / "squares.json").write_text(json.dumps(squares))
    (folder / "items.json").write_text(json.dumps([asdict(item) for item in items]))
    done.write_text(json.dumps({"tiers": list(tiers), "spec": asdict(spec), "pages": len(texts)}))
    return _load_pool(spec, folder, tiers)


class _Serial:
    """The in-process stand-in for multiprocessing.Pool (one worker: tests, debugging)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def imap(self, fn, jobs, chunksize: int = 1):
        return map(fn, jobs)


def _load_pool(spec: PoolSpec, folder: Path, tiers: tuple[str, ...]) -> Pool:
    texts = json.loads((folder / "texts.json").read_text())
    words_file = folder / "words.json"
    words = json.loads(words_file.read_text()) if words_file.is_file() else [[] for _ in texts]
    squares_file = folder / "squares.json"
    full = (0, 0, TIER_SIZES["base"])
    squares = (
        [tuple(q) for q in json.loads(squares_file.read_text())]
        if squares_file.is_file()
        else [full for _ in texts]
    )
    items = [
        PoolItem(d["kind"], d["seed"], d["pages"], [tuple(f) for f in d["facts"]])
        for d in json.loads((folder / "items.json").read_text())
    ]
    arrays = {}
    for tier in tiers:
        size = TIER_SIZES[tier]
        if (folder / f"{tier}.npy").is_file():  # pools cached before the raw format
            arrays[tier] = np.load(folder / f"{tier}.npy", mmap_mode="r")
        else:
            shape = (len(texts), size, size)
            arrays[tier] = np.memmap(folder / f"{tier}.u8", np.uint8, "r", shape=shape)
    return Pool(spec, texts, words, squares, arrays, items)


def page_from_png(data: bytes) -> Image.Image:
    """A cached canonical render back as an RGB image."""
    return Image.open(io.BytesIO(data)).convert("RGB")
