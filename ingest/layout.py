"""Lay out HTML fragments onto A4 pages with pymupdf's Story, into an in-memory PDF.

Text formats have no pages of their own; the model reads pages, so we make them the way a
printer would: A4, 0.75 inch margins, 11 pt sans-serif body text, using only pymupdf's built-in
fonts (nothing is loaded from the system or the network, so a page renders the same on every
worker, and identical text gives identical page hashes).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

import pymupdf

from ingest.errors import DocumentTooLarge

log = logging.getLogger(__name__)

PAGE = pymupdf.paper_rect("a4")  # 595 x 842 pt
MARGIN = 54.0  # 0.75 in, a common word-processor default
CONTENT = PAGE + (MARGIN, MARGIN, -MARGIN, -MARGIN)
BASE_FONT_PT = 11.0  # readable at the 1024 px render (~13 px per line of type)
_OVERFLOW_TOLERANCE = 36.0  # `filled` includes the last block's bottom margin (a few pt)
MAX_LAYOUT_PAGES = 25_000  # 50 MB of dense text is ~10,000 pages; more means a runaway layout

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
table { border-collapse: collapse; margin: 0.3em 0 0.6em 0; }
td, th { border: 0.5pt solid #888; padding: 2pt 4pt; vertical-align: top; }
td p, th p { margin: 0; }
"""


def layout_html(fragments: Iterable[str]) -> bytes:
    """Lay out each fragment (a self-contained piece of HTML) from the top of a new page.

    Returns the bytes of a PDF. Exceptions raised while producing the fragments (EmptyDocument,
    DocumentTooLarge) propagate unchanged.
    """
    buffer = io.BytesIO()
    writer = pymupdf.DocumentWriter(buffer, "compress")
    pages = 0
    try:
        for fragment in fragments:
            story = pymupdf.Story(fragment, user_css=BASE_CSS, em=BASE_FONT_PT)
            more = True
            while more:
                pages += 1
                if pages > MAX_LAYOUT_PAGES:
                    raise DocumentTooLarge(
                        f"the document lays out to more than {MAX_LAYOUT_PAGES:,} pages; "
                        "split it into smaller files"
                    )
                device = writer.begin_page(PAGE)
                more, filled = story.place(CONTENT)
                story.draw(device)
                writer.end_page()
                if pymupdf.Rect(filled).y1 > CONTENT.y1 + _OVERFLOW_TOLERANCE:
                    # Seen with some font sizes in pymupdf 2.0: text beyond the page is lost.
                    log.warning(
                        "layout overflowed page %d (%s); text may be cut off", pages, filled
                    )
    except BaseException:
        try:
            writer.close()
        except Exception:  # a writer with no pages refuses to close; the first error matters
            pass
        raise
    writer.close()
    return buffer.getvalue()
