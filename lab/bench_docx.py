"""DOCX -> text tier: what the hand-written converter and mammoth each keep of a Word document.

    python -m lab.bench_docx                  # a table per document, then the totals
    python -m lab.bench_docx --out docx.json
    (needs `pip install mammoth==1.13.0`: not a project dependency, measured and not shipped;
    the figures and the decision are in docs/benchmarks.md, "DOCX conversion")

The documents are built here with python-docx, as Word writes them: a title and headings of
levels 1-4 (built-in styles, and one custom style that is a heading only by its outline level),
bulleted and numbered lists, nested, both by list style ("List Bullet 2") and as Word itself
saves them (a "List Paragraph" with its own numbering), tables with a header row, a merged
cell and a list inside a cell, bold and italic runs. Each builder returns the truth: every
heading, list item, table cell, bold span and word.

Each converter's HTML then goes down the service's own path (``sanitize_html`` for mammoth,
whose HTML is the Word file's, then ``HtmlSplitter``, ``ingest.layout.layout_html`` and the text
tier as ``ingest.render.text_layer`` reads it), and the bench counts what survives:
  headings    as <h1>-<h6> in the HTML, and as a line of their own in the text tier;
  list items  as <li> (ordered or not, as the truth says), and as a line that starts with the
              list's marker in the text tier ("•" for bullets, "1." / "a." for numbers);
  table cells as <td>/<th>, and the cell's text in the text tier;
  bold        as <b>/<strong> around the span (the text tier has no bold);
  words       the document's words found in the text tier (as a multiset).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import docx
import pymupdf
from docx.enum.style import WD_STYLE_TYPE
from docx.oxml import OxmlElement
from docx.oxml.ns import qn

from ingest.layout import layout_html
from ingest.render import _TEXT_FLAGS
from ingest.text_formats import (
    FRAGMENT_CHARS,
    HtmlSplitter,
    _docx_html,
    sanitize_html,
    unmark_breaks,
)


@dataclass
class Truth:
    headings: list[str] = field(default_factory=list)
    items: list[tuple[str, str, int]] = field(default_factory=list)  # text, ul/ol, level
    cells: list[str] = field(default_factory=list)
    bold: list[str] = field(default_factory=list)
    words: Counter[str] = field(default_factory=Counter)
    merged: int = 0  # merged table cells (one rowspan/colspan each)

    def text(self, *pieces: str) -> None:
        for piece in pieces:
            self.words.update(_words(piece))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+(?:[.,']\w+)*", text)


# --- the documents ------------------------------------------------------------------------------


def _heading(doc: Any, truth: Truth, text: str, level: int) -> None:
    doc.add_heading(text, level=level)
    truth.headings.append(text)
    truth.text(text)


def _paragraph(doc: Any, truth: Truth, *runs: tuple[str, str]) -> None:
    """runs: (text, "" | "b" | "i")."""
    paragraph = doc.add_paragraph()
    for text, style in runs:
        run = paragraph.add_run(text)
        run.bold = style == "b" or None
        run.italic = style == "i" or None
        if style == "b":
            truth.bold.append(text.strip())
        truth.text(text)


def _styled_item(container: Any, truth: Truth, text: str, style: str) -> None:
    container.add_paragraph(text, style=style)
    level = int(style[-1]) - 1 if style[-1].isdigit() else 0
    truth.items.append((text, "ol" if "Number" in style else "ul", level))
    truth.text(text)


def _word_item(doc: Any, truth: Truth, text: str, num_id: str, level: int, kind: str) -> None:
    """A list item as Word saves it: "List Paragraph" plus the paragraph's own numbering."""
    paragraph = doc.add_paragraph(text, style="List Paragraph")
    num_pr = OxmlElement("w:numPr")
    for tag, value in (("w:ilvl", str(level)), ("w:numId", num_id)):
        child = OxmlElement(tag)
        child.set(qn("w:val"), value)
        num_pr.append(child)
    paragraph._p.get_or_add_pPr().append(num_pr)
    truth.items.append((text, kind, level))
    truth.text(text)


def _style_num_id(doc: Any, style: str) -> str:
    values = doc.styles[style].element.xpath("./w:pPr/w:numPr/w:numId/@w:val")
    return str(values[0])


def _table(container: Any, truth: Truth, rows: list[list[str]], header: bool = True) -> Any:
    table = container.add_table(rows=len(rows), cols=len(rows[0]))
    table.style = "Table Grid"
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            cell = table.cell(r, c)
            cell.text = value
            if header and r == 0:
                cell.paragraphs[0].runs[0].bold = True
                truth.bold.append(value)
            truth.cells.append(value)
            truth.text(value)
    return table


def report(doc: Any, truth: Truth) -> None:
    """A quarterly report: headings 1-3, lists by style, a table, bold and italic."""
    _heading(doc, truth, "Quarterly Report Northwind", 0)
    _heading(doc, truth, "Revenue and margins", 1)
    _paragraph(doc, truth, ("Revenue grew by ", ""), ("twelve percent", "b"),
               (" in the third quarter, ", ""), ("ahead of plan", "i"), (".", ""))  # fmt: skip
    _heading(doc, truth, "Drivers of growth", 2)
    for text in ["Lisbon office opened in March", "Retail channel doubled"]:
        _styled_item(doc, truth, text, "List Bullet")
    _styled_item(doc, truth, "Online share reached forty percent", "List Bullet 2")
    _styled_item(doc, truth, "Partners resold the new tier", "List Bullet")
    _heading(doc, truth, "Next steps for the board", 3)
    for text in ["Approve the Rotterdam warehouse", "Hire twelve engineers", "Review prices"]:
        _styled_item(doc, truth, text, "List Number")
    _heading(doc, truth, "Sales by region", 1)
    _table(doc, truth, [["Region", "Q2 sales", "Q3 sales"], ["North", "1,200", "1,350"],
                        ["South", "980", "1,105"], ["East", "2,040", "2,310"]])  # fmt: skip
    _paragraph(doc, truth, ("Figures are in ", ""), ("thousands of euros", "b"), (".", ""))


def manual(doc: Any, truth: Truth) -> None:
    """An operating manual: lists as Word saves them (own numbering, nested), a table with a
    merged cell and a list in a cell, a heading 4."""
    bullets, numbers = _style_num_id(doc, "List Bullet"), _style_num_id(doc, "List Number")
    _heading(doc, truth, "Operating Manual for the Press", 1)
    _paragraph(doc, truth, ("Read every ", ""), ("safety rule", "b"), (" before starting.", ""))
    _heading(doc, truth, "Starting the machine", 2)
    _word_item(doc, truth, "Check the hydraulic pressure gauge", numbers, 0, "ol")
    _word_item(doc, truth, "Close the front safety guard", numbers, 0, "ol")
    _word_item(doc, truth, "Press both start buttons together", numbers, 0, "ol")
    _heading(doc, truth, "Daily checks", 2)
    _word_item(doc, truth, "Oil level above the red mark", bullets, 0, "ul")
    _word_item(doc, truth, "Filter cartridge replaced weekly", bullets, 1, "ul")
    _word_item(doc, truth, "No leaks under the base plate", bullets, 0, "ul")
    _heading(doc, truth, "Maintenance intervals", 4)
    table = _table(doc, truth, [["Part", "Interval", "Owner"], ["Hydraulic oil", "500 hours",
                   "Technician"], ["Seals", "2,000 hours", "Technician"]])  # fmt: skip
    merged = table.cell(1, 2).merge(table.cell(2, 2))  # "Technician" once, over two rows
    merged.text = "Technician"
    truth.merged += 1
    truth.cells.remove("Technician")
    truth.words.subtract(["Technician"])
    cell = table.add_row().cells[0]
    cell.text = "Belts"
    truth.cells.append("Belts")
    truth.text("Belts")
    _styled_item(cell, truth, "Check tension monthly", "List Bullet")
    _paragraph(doc, truth, ("Call service on ", ""), ("extension 4471", "b"), (".", ""))


def handbook(doc: Any, truth: Truth) -> None:
    """A staff handbook: a custom heading style (a heading by its outline level only, as a
    localized Word makes), deep numbered lists, a wide table."""
    style = doc.styles.add_style("Kapitel", WD_STYLE_TYPE.PARAGRAPH)
    outline = OxmlElement("w:outlineLvl")
    outline.set(qn("w:val"), "0")
    style.element.get_or_add_pPr().append(outline)
    style.font.bold, style.font.size = True, docx.shared.Pt(16)
    doc.add_paragraph("Kapitel Eins Arbeitszeit", style="Kapitel")
    truth.headings.append("Kapitel Eins Arbeitszeit")
    truth.text("Kapitel Eins Arbeitszeit")
    _paragraph(doc, truth, ("Core hours run from ten to four; ", ""),
               ("overtime needs approval", "b"), (".", ""))  # fmt: skip
    _heading(doc, truth, "Leave and holidays", 2)
    _styled_item(doc, truth, "Request leave two weeks ahead", "List Number")
    _styled_item(doc, truth, "Managers answer within three days", "List Number 2")
    _styled_item(doc, truth, "Unanswered requests count as approved", "List Number 2")
    _styled_item(doc, truth, "Carry over at most five days", "List Number")
    _heading(doc, truth, "Contacts", 2)
    _table(doc, truth, [["Team", "Name", "Phone", "Room", "Hours"],
                        ["Payroll", "Ines Duarte", "4410", "B12", "9-17"],
                        ["Facilities", "Tom Berger", "4420", "C03", "8-16"]])  # fmt: skip


DOCUMENTS: dict[str, Callable[[Any, Truth], None]] = {
    "report": report,
    "manual": manual,
    "handbook": handbook,
}


# --- the converters -----------------------------------------------------------------------------


def python_docx_html(path: Path) -> str:
    """The service's hand-written converter (ingest.text_formats), its HTML whole."""
    return "".join(_docx_html(path))


def mammoth_html(path: Path) -> str:
    """mammoth's HTML (images left out, as the hand-written converter does), then sanitized."""
    import mammoth

    def no_image(image: Any) -> dict[str, str]:
        return {}

    with path.open("rb") as file:
        result = mammoth.convert_to_html(file, convert_image=mammoth.images.img_element(no_image))
    return sanitize_html(result.value)


CONVERTERS: dict[str, Callable[[Path], str]] = {"hand-written": python_docx_html,
                                                "mammoth": mammoth_html}  # fmt: skip


def text_tier(markup: str) -> str:
    """HTML -> the pages' text tier, as ingest lays out a text format and reads it back."""
    splitter = HtmlSplitter(FRAGMENT_CHARS)
    fragments = [*splitter.feed_html(markup), *splitter.finish()]
    with pymupdf.open(stream=layout_html(fragments), filetype="pdf") as doc:
        return "".join(unmark_breaks(page.get_text(flags=_TEXT_FLAGS)) for page in doc)


# --- counting -----------------------------------------------------------------------------------

_MARKER = {"ul": r"[•◦○▪▫●■□–-]", "ol": r"(?:\d+|[a-zA-Z]|[ivxIVX]+)[.)]"}


class _Structure(HTMLParser):
    """Headings, list items (kind, nesting level), table cells and bold spans of some HTML."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[str] = []
        self.items: list[tuple[str, str, int]] = []
        self.cells: list[str] = []
        self.bold: list[str] = []
        self.merged = 0  # cells with rowspan or colspan
        self._lists: list[str] = []
        self._open: list[tuple[str, list[str], Any]] = []  # (tag, text parts, extra)
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("ul", "ol"):
            self._lists.append(tag)
        if any(name in ("rowspan", "colspan") for name, _ in attrs) and tag in ("td", "th"):
            self.merged += 1
        if re.fullmatch(r"h[1-6]|li|td|th|b|strong", tag):
            extra = (self._lists[-1], len(self._lists) - 1) if tag == "li" and self._lists else None
            self._open.append((tag, [], extra))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("ul", "ol") and self._lists:
            self._lists.pop()
        if self._open and self._open[-1][0] == tag:
            _, parts, extra = self._open.pop()
            text = _norm("".join(parts))
            if tag == "li" and extra:
                self.items.append((text, *extra))
            elif tag in ("td", "th"):
                self.cells.append(text)
            elif tag in ("b", "strong"):
                self.bold.append(text)
            else:
                self.headings.append(text)

    def handle_data(self, data: str) -> None:
        items = [i for i, (tag, _, _) in enumerate(self._open) if tag == "li"]
        for i, (tag, parts, _) in enumerate(self._open):
            if tag != "li" or i == items[-1]:  # a list item's own text, not its sublist's
                parts.append(data)


def _norm(text: str) -> str:
    return " ".join(text.split())


def measure(truth: Truth, markup: str, text: str) -> dict[str, Any]:
    lines = [_norm(line) for line in text.splitlines()]
    joined = _norm(text)
    found = _Structure(markup)
    items_html = {item: (kind, level) for item, kind, level in found.items}

    def item_line(item: str, kind: str) -> bool:
        pattern = re.compile(rf"^{_MARKER[kind]}\s*{re.escape(item)}$")
        return any(pattern.match(line) for line in lines)

    def in_cell(cell: str) -> bool:
        return any(c == cell or c.startswith(cell + " ") or c.startswith(cell) for c in found.cells)

    words = Counter(_words(text))
    return {
        "headings_html": sum(_norm(h) in found.headings for h in truth.headings),
        "headings_text": sum(_norm(h) in lines for h in truth.headings),
        "items_html": sum(items_html.get(_norm(i), ("", -1))[0] == k for i, k, _ in truth.items),
        "levels_html": sum(items_html.get(_norm(i)) == (k, lv) for i, k, lv in truth.items),
        "items_text": sum(item_line(_norm(i), k) for i, k, _ in truth.items),
        "cells_html": sum(in_cell(_norm(c)) for c in truth.cells),
        "cells_text": sum(_norm(c) in joined for c in truth.cells),
        "merged_html": found.merged,
        "bold_html": sum(_norm(b) in found.bold for b in truth.bold),
        "words_text": sum(min(n, words[w]) for w, n in truth.words.items()),
    }


def totals(truth: Truth) -> dict[str, int]:
    return {
        "headings": len(truth.headings),
        "items": len(truth.items),
        "levels": len(truth.items),
        "cells": len(truth.cells),
        "merged": truth.merged,
        "bold": len(truth.bold),
        "words": sum(truth.words.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in DOCUMENTS.items():
            document, truth = docx.Document(), Truth()
            build(document, truth)
            path = Path(tmp) / f"{name}.docx"
            buffer = io.BytesIO()
            document.save(buffer)
            path.write_bytes(buffer.getvalue())
            results[name] = {"truth": totals(truth)}
            for converter, convert in CONVERTERS.items():
                started = time.perf_counter()
                markup = convert(path)
                seconds = time.perf_counter() - started
                figures = measure(truth, markup, text_tier(markup))
                results[name][converter] = {**figures, "convert_s": round(seconds, 4)}
    keys = ["headings_html", "headings_text", "items_html", "levels_html", "items_text",
            "cells_html", "cells_text", "merged_html", "bold_html", "words_text"]  # fmt: skip
    all_truth: Counter[str] = Counter()
    all_found: dict[str, Counter[str]] = {c: Counter() for c in CONVERTERS}
    for name, result in results.items():
        all_truth.update(result["truth"])
        print(f"\n{name}: " + ", ".join(f"{v} {k}" for k, v in result["truth"].items()))
        for converter in CONVERTERS:
            all_found[converter].update({k: result[converter][k] for k in keys})
            row = "  ".join(f"{k} {result[converter][k]}" for k in keys)
            print(f"  {converter:>12}: {row}  ({result[converter]['convert_s'] * 1000:.0f} ms)")
    print("\nall documents (kept / in the documents):")
    for converter in CONVERTERS:
        row = "  ".join(f"{k} {all_found[converter][k]}/{all_truth[k.split('_')[0]]}" for k in keys)
        print(f"  {converter:>12}: {row}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
