"""Lay out HTML fragments onto A4 pages with pymupdf's Story, into an in-memory PDF.

Text formats have no pages of their own; the model reads pages, so we make them the way a
printer would: A4, 0.75 inch margins, 11 pt sans-serif body text, using only pymupdf's built-in
fonts (nothing is loaded from the system or the network, so a page renders the same on every
worker, and identical text gives identical page hashes).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pymupdf

from ingest.errors import TooManyPages

log = logging.getLogger(__name__)

PAGE = pymupdf.paper_rect("a4")  # 595 x 842 pt
MARGIN = 54.0  # 0.75 in, a common word-processor default
CONTENT = PAGE + (MARGIN, MARGIN, -MARGIN, -MARGIN)
BASE_FONT_PT = 11.0  # readable at the 1024 px render (~13 px per line of type)
_OVERFLOW_TOLERANCE = 36.0  # `filled` includes the last block's bottom margin (a few pt)
MAX_LAYOUT_PAGES = 25_000  # layout_styled_html's guard (synthetic documents); uploads are capped
# by the caller's max_pages (the max_pages_per_document setting)

# MuPDF's HTML engine supports a CSS subset; this stays inside it. `em` is BASE_FONT_PT.
BASE_CSS = """
body { font-family: sans-serif; line-height: 1.3; margin: 0; }
p { margin: 0 0 0.5em 0; }
h1 { font-size: 1.6em; margin: 0.6em 0 0.4em 0; }
h2 { font-size: 1.35em; margin: 0.6em 0 0.4em 0; }
h3 { font-size: 1.15em; margin: 0.5em 0 0.3em 0; }
h4, h5, h6 { font-size: 1em; margin: 0.5em 0 0.3em 0; }
pre, code, kbd, samp, tt { font-family: monospace; font-size: 0.86em; }
pre { white-space: pre-wrap; margin: 0 0 0.5em 0; }
blockquote { margin: 0.5em 0 0.5em 1.5em; }
ul, ol { margin: 0 0 0.5em 0; padding-left: 1.6em; }
li p { margin: 0; }
li ul, li ol { margin: 0; }
table { border-collapse: collapse; margin: 0.3em 0 0.6em 0; }
td, th { border: 0.5pt solid #888; padding: 2pt 4pt; vertical-align: top; }
td p, th p { margin: 0; }
div.table { margin: 0.3em 0 0.6em 0; border-bottom: 0.5pt solid #888; }
div.row { border-top: 0.5pt solid #888; padding: 2pt 0; }
div.head { font-weight: bold; }
"""


@contextmanager
def _pdf_writer() -> Iterator[tuple[pymupdf.DocumentWriter, io.BytesIO]]:
    """A PDF writer into memory, closed on every path; the PDF is in the buffer afterwards."""
    buffer = io.BytesIO()
    writer = pymupdf.DocumentWriter(buffer, "compress")
    try:
        yield writer, buffer
    except BaseException:
        try:
            writer.close()
        except Exception:  # a writer with no pages refuses to close; the first error matters
            pass
        raise
    writer.close()


def layout_html(fragments: Iterable[str], max_pages: int | None = None) -> bytes:
    """Lay out each fragment (a self-contained piece of HTML) from the top of a new page.

    Returns the bytes of a PDF. Every fragment is laid out once, except a table that does not
    fit the page (too wide, or a row taller than a page): MuPDF would cut it off at the margin,
    so that fragment is laid out again with its tables as plain blocks, which wrap, and no
    column is lost. Raises TooManyPages as soon as the layout passes `max_pages` (None: no cap)
    instead of laying out the rest. Exceptions raised while producing the fragments
    (EmptyDocument, DocumentTooLarge) propagate unchanged.
    """
    segments: list[bytes] = []  # PDFs in page order; a table fragment is laid out on its own
    pages = 0
    pending: list[str] = []  # fragments without tables, laid out together into one segment

    def flush() -> None:
        nonlocal pages
        if pending:
            with _pdf_writer() as (writer, buffer):
                for fragment in pending:
                    pages = _place(fragment, writer, pages, max_pages)
            segments.append(buffer.getvalue())
            pending.clear()

    for fragment in fragments:
        if "<table" in fragment:
            flush()
            laid_out = _place_table_fragment(fragment, pages, max_pages)
            if laid_out is None:  # too wide or too tall: flattened, it wraps
                pending.append(flatten_tables(fragment))
                flush()
            else:
                segments.append(laid_out[0])
                pages += laid_out[1]
        else:
            pending.append(fragment)
            if len(pending) >= 8:  # fragments are ~100 pages each: bound what waits here
                flush()
    flush()
    if len(segments) == 1:
        return segments[0]
    with pymupdf.open() as joined:
        for segment in segments:
            with pymupdf.open(stream=segment, filetype="pdf") as part:
                joined.insert_pdf(part)
        return joined.tobytes(deflate=True)


def _place(fragment: str, writer: pymupdf.DocumentWriter, pages: int, max_pages: int | None) -> int:
    """Lay one fragment out onto new pages of `writer`; the page count so far afterwards."""
    story = pymupdf.Story(fragment, user_css=BASE_CSS, em=BASE_FONT_PT)
    more = True
    while more:
        pages += 1
        _check_page_count(pages, max_pages)
        device = writer.begin_page(PAGE)
        more, filled = story.place(CONTENT)
        story.draw(device)
        writer.end_page()
        if pymupdf.Rect(filled).y1 > CONTENT.y1 + _OVERFLOW_TOLERANCE:
            log.warning("layout overflowed page %d (%s); text may be cut off", pages, filled)
    return pages


def _place_table_fragment(
    fragment: str, pages: int, max_pages: int | None
) -> tuple[bytes, int] | None:
    """(PDF, its pages) of a fragment with tables; None, as soon as a page overflows.

    Each page is checked after it is placed and before it is drawn, so a table that runs past
    the right margin or the bottom stops the layout at once.
    """
    story = pymupdf.Story(fragment, user_css=BASE_CSS, em=BASE_FONT_PT)
    count = 0
    with _pdf_writer() as (writer, buffer):
        more = True
        while more:
            count += 1
            _check_page_count(pages + count, max_pages)
            more, filled = story.place(CONTENT)
            rect = pymupdf.Rect(filled)
            if (
                rect.x1 > CONTENT.x1 + _OVERFLOW_TOLERANCE / 4
                or rect.y1 > CONTENT.y1 + _OVERFLOW_TOLERANCE
            ):
                if count == 1:
                    writer.begin_page(PAGE)  # a writer with no pages refuses to close
                    writer.end_page()
                return None
            device = writer.begin_page(PAGE)
            story.draw(device)
            writer.end_page()
    return buffer.getvalue(), count


_TABLE_TAG = re.compile(r"<(/?)(table|thead|tbody|tfoot|tr|td|th|caption)\b[^>]*>")
_FLAT_CLASS = {"table": "table", "tr": "row", "td": "cell", "th": "cell head", "caption": "cell"}


def flatten_tables(fragment: str) -> str:
    """Tables -> nested <div>s: one block per row, one per cell (our sanitized HTML only)."""

    def replace(match: re.Match[str]) -> str:
        closing, tag = match.groups()
        if tag in ("thead", "tbody", "tfoot"):
            return ""
        return "</div>" if closing else f'<div class="{_FLAT_CLASS[tag]}">'

    return _TABLE_TAG.sub(replace, fragment)


def _check_page_count(pages: int, max_pages: int | None) -> None:
    if max_pages is not None and pages > max_pages:
        raise TooManyPages(max_pages)


FONT_FACES = ("regular", "bold", "italic", "bolditalic")  # the keys of layout_styled_html's fonts
_FACE_CSS = {
    "regular": "",
    "bold": " font-weight: bold;",
    "italic": " font-style: italic;",
    "bolditalic": " font-weight: bold; font-style: italic;",
}


def layout_styled_html(
    fragments: Iterable[str],
    font_family: str = "sans-serif",
    font_size: float = BASE_FONT_PT,
    columns: int = 1,
    font_files: dict[str, str] | None = None,
    column_gap: float = 18.0,
) -> bytes:
    """``layout_html`` with a chosen body font, size and 1 or 2 columns, on the same A4 pages.

    ``font_family`` is a CSS family MuPDF knows without files ("sans-serif" = Helvetica,
    "serif" = Times, "monospace" = Courier), or, with ``font_files``, the name given to the
    TrueType files it maps from FONT_FACES ("regular", "bold", ...; paths, all in one directory).
    With two columns each page is filled left column first, then right; the text layer reads
    in that order too. Used by the model's synthetic documents (lab/data.py); uploads keep
    ``layout_html``.
    """
    if columns not in (1, 2):
        raise ValueError(f"columns must be 1 or 2, got {columns}")
    if not 4.0 <= font_size <= 36.0:
        raise ValueError(f"font_size {font_size} pt is outside 4..36")
    css = BASE_CSS
    archive = None
    if font_files:
        unknown = set(font_files) - set(FONT_FACES)
        if unknown or "regular" not in font_files:
            raise ValueError(f"font_files needs 'regular' and only keys of {FONT_FACES}")
        paths = {face: Path(file) for face, file in font_files.items()}
        folders = {p.parent for p in paths.values()}
        if len(folders) != 1:
            raise ValueError(f"font files must share one directory, got {sorted(folders)}")
        archive = pymupdf.Archive(str(folders.pop()))
        css += "".join(
            f"@font-face {{ font-family: {font_family}; src: url({p.name});{_FACE_CSS[face]} }}\n"
            for face, p in paths.items()
        )
    css += f"body {{ font-family: {font_family}; }}\n"
    if columns == 1:
        rects = [CONTENT]
    else:
        width = (CONTENT.width - column_gap) / 2
        rects = [
            pymupdf.Rect(CONTENT.x0, CONTENT.y0, CONTENT.x0 + width, CONTENT.y1),
            pymupdf.Rect(CONTENT.x1 - width, CONTENT.y0, CONTENT.x1, CONTENT.y1),
        ]
    pages = 0
    with _pdf_writer() as (writer, buffer):
        for fragment in fragments:
            story = pymupdf.Story(fragment, user_css=css, em=font_size, archive=archive)
            more = True
            while more:
                pages += 1
                _check_page_count(pages, MAX_LAYOUT_PAGES)
                device = writer.begin_page(PAGE)
                for rect in rects:
                    if not more:
                        break
                    more, _ = story.place(rect)
                    story.draw(device)
                writer.end_page()
    return buffer.getvalue()
