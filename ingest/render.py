"""Documents -> canonical page renders, a chunk of pages at a time.

Every page of every format ends up the same way: rendered so that its longer side is
CANONICAL.size (1024 px), centered on a white CANONICAL.size square, RGB. The smaller tiers are
downscaled from that one image (`tier_image`), so a page looks the same at every tier, only
blurrier; those that crop (ingest.tiers) first cut it to the square around its ink
(`content_square`), so their pixels go to the text rather than to the margins.

pymupdf opens PDF, XPS, EPUB and images; the text formats are first laid out into a PDF
(ingest.text_formats, ingest.layout). pymupdf is not thread-safe: use one document per thread
(workers are processes, so this never comes up there).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pymupdf
from PIL import Image

from ingest.archive import check_zip
from ingest.errors import (
    CorruptDocument,
    DocumentTooLarge,
    EmptyDocument,
    EncryptedDocument,
    IngestError,
    TooManyPages,
)
from ingest.layout import PAGE, layout_html
from ingest.ocr import PageReader
from ingest.text_formats import html_fragments, unmark_breaks
from ingest.tiers import CANONICAL, TEXT, get_tier
from ingest.upload import (
    IMAGE_EXTENSIONS,
    SNIFF_BYTES,
    TEXT_EXTENSIONS,
    check_magic,
    normalize_extension,
)

MAX_EPUB_CHAPTER_BYTES = 16 * 1024 * 1024  # MuPDF lays a chapter out whole before it can count
# its pages (~10 MB/s, ~180 pages per MB of plain paragraphs): 16 MB is ~3,000 pages, already
# over the default page cap; a 200 MB chapter took 4.3 GB and 15 minutes.
MAX_IMAGE_PIXELS = 150_000_000  # per frame; a 600 dpi A2 scan is ~70 Mpx. Decoding a bigger
# image would take gigabytes of worker memory, and it ends up at 1024 px anyway.
# What MuPDF raises for a file it cannot read. Nothing broader: a time limit that interrupts the
# layout (Celery's SoftTimeLimitExceeded) must reach the worker as what it is, not as "damaged".
_MUPDF_ERRORS = (RuntimeError, ValueError, IndexError, pymupdf.mupdf.FzErrorBase)
# pymupdf's defaults for plain text, minus ligature preservation: "ﬁ" (one glyph, U+FB01) reads
# back as "fi", so the text tier and text search see ordinary words.
_TEXT_FLAGS = pymupdf.TEXTFLAGS_TEXT & ~pymupdf.TEXT_PRESERVE_LIGATURES
_FORMAT_NAMES = {
    ".pdf": "PDF",
    ".xps": "XPS document",
    ".epub": "EPUB book",
    ".png": "PNG image",
    ".jpg": "JPEG image",
    ".jpeg": "JPEG image",
    ".tif": "TIFF image",
    ".tiff": "TIFF image",
}


class TextSource(StrEnum):
    """Where a page's text tier came from."""

    TEXT_LAYER = "text_layer"  # the document's own text (PDF text layer, our text layout)
    OCR = "ocr"  # read off the pixels: the page had no text layer (a scan, a photo)


@dataclass
class RenderedPage:
    number: int  # 1-based, as users and citations count pages
    image: Image.Image  # RGB, CANONICAL.size x CANONICAL.size, page centered on white
    text: str  # the text tier: the page's text layer, else what OCR read ("" if nothing)
    content_hash: str  # sha256 of image pixels + text: equal pages share cached tokens
    text_source: TextSource = TextSource.TEXT_LAYER


class _LaidOutDocument(pymupdf.Document):
    """A text document we laid out ourselves: its text layer carries our line-break marks."""


@contextmanager
def open_document(path: Path, ext: str, max_pages: int | None = None) -> Iterator[pymupdf.Document]:
    """Open any supported document as a pymupdf Document with at least one page; always close it.

    `ext` is the upload's extension (the stored file may have none). `max_pages` (None: no cap;
    uploads pass the max_pages_per_document setting) is checked before any page is rendered,
    and text and EPUB layouts stop as soon as they pass it. A reflowable document is laid out
    here, once: render every page from the one open document. Raises the IngestError
    subclasses: UnsupportedFormat, EmptyDocument, EncryptedDocument, CorruptDocument,
    DocumentTooLarge (TooManyPages).
    """
    ext = normalize_extension(ext)
    size = path.stat().st_size
    if size == 0:
        raise EmptyDocument("the file is empty (0 bytes); upload the document again")
    with path.open("rb") as file:
        check_magic(ext, file.read(SNIFF_BYTES))

    doc: pymupdf.Document
    if ext in TEXT_EXTENSIONS:
        doc = _LaidOutDocument(stream=layout_html(html_fragments(path, ext), max_pages),
                               filetype="pdf")  # fmt: skip
    else:
        if ext in IMAGE_EXTENSIONS:
            _check_image_size(path, max_pages)
        elif ext in (".epub", ".xps"):  # zip containers: measured before MuPDF inflates them
            _check_container(path, ext)
        doc = _open_with_pymupdf(path, ext)
    try:
        _prepare(doc, ext, max_pages)
        yield doc
    finally:
        doc.close()


def count_pages(path: Path, ext: str, max_pages: int | None = None) -> int:
    """Number of pages the document renders to (for text formats: after layout)."""
    with open_document(path, ext, max_pages) as doc:
        return doc.page_count


def iter_page_chunks(
    path: Path,
    ext: str,
    chunk_size: int = 16,
    start: int = 1,
    max_pages: int | None = None,
    ocr: PageReader | None = None,
) -> Iterator[list[RenderedPage]]:
    """Open the document and render pages `start`..last, in lists of at most `chunk_size`.

    The document is closed when the iteration ends, fails, or is abandoned. To know the page
    count too, open it once with `open_document` and use `page_chunks`: a text document or an
    EPUB is laid out each time it is opened.
    """
    with open_document(path, ext, max_pages) as doc:
        yield from page_chunks(doc, chunk_size, start, ocr)


def page_chunks(
    doc: pymupdf.Document, chunk_size: int = 16, start: int = 1, ocr: PageReader | None = None
) -> Iterator[list[RenderedPage]]:
    """Render pages `start`..last of an open document, yielding lists of at most `chunk_size`.

    With ``ocr``, a page without a text layer gets its text from the OCR engine (render_page).

    Only the chunk being handed out is held here: a 1,000-page PDF never sits in memory whole,
    as long as the caller lets go of each chunk before asking for the next. `start` (1-based) lets
    a retried task resume where it stopped; a start past the last page yields nothing.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if start < 1:
        raise ValueError(f"start is a 1-based page number, got {start}")
    last = doc.page_count
    for first in range(start, last + 1, chunk_size):
        chunk = [render_page(doc, n, ocr) for n in range(first, min(first + chunk_size, last + 1))]
        yield chunk
        del chunk  # else this frame keeps it alive while the next chunk renders


def render_page(doc: pymupdf.Document, number: int, ocr: PageReader | None = None) -> RenderedPage:
    """Render page `number` (1-based) of an open document to its canonical square image.

    The text tier is the page's text layer. A page with none (a scan, a photo, an image-only PDF
    page) is read by ``ocr``, if given, from its own render at the engine's resolution
    (``ocr.size``, larger than the canonical one: small print needs the pixels); pages of a
    text document we laid out ourselves always have their text already.
    """
    size = CANONICAL.size
    source = TextSource.TEXT_LAYER
    try:
        page = doc.load_page(number - 1)
        rect = page.rect
        if rect.width <= 0 or rect.height <= 0:
            raise CorruptDocument(f"page {number} of the document has no size and cannot be shown")
        zoom = _canonical_zoom(rect)
        pixmap = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB,
                                 alpha=False)  # fmt: skip
        text = text_layer(doc, page)
        scan = None
        if ocr is not None and not text.strip() and not isinstance(doc, _LaidOutDocument):
            scan = _ocr_render(page, ocr.size)
        rendered = Image.frombuffer(
            "RGB", (pixmap.width, pixmap.height), pixmap.samples, "raw", "RGB", pixmap.stride, 1
        )
        # Rounding can make the long side size + 1 px; dropping that pixel is invisible.
        rendered = rendered.crop((0, 0, min(pixmap.width, size), min(pixmap.height, size)))
        del pixmap
    except _MUPDF_ERRORS as exc:  # RuntimeError subclasses and MuPDF's own FzError types
        raise CorruptDocument(
            f"page {number} of the document could not be rendered; the file may be damaged"
        ) from exc

    if scan is not None and ocr is not None:  # outside the try: an OCR error is not a damaged file
        text, source = ocr.read(scan), TextSource.OCR
        del scan
    image = Image.new("RGB", (size, size), "white")
    image.paste(rendered, _canonical_offset(rendered.width, rendered.height))
    return RenderedPage(
        number=number, image=image, text=text, content_hash=page_hash(image, text),
        text_source=source,
    )  # fmt: skip


def _ocr_render(page: pymupdf.Page, long_side: int) -> Image.Image:
    """The page in grey levels, its long side ``long_side`` pixels, for the OCR engine."""
    zoom = long_side / max(page.rect.width, page.rect.height)
    pixmap = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csGRAY,
                             alpha=False)  # fmt: skip
    return Image.frombuffer(
        "L", (pixmap.width, pixmap.height), pixmap.samples, "raw", "L", pixmap.stride, 1
    )


def text_layer(doc: pymupdf.Document, page: pymupdf.Page) -> str:
    """A page's text tier: its text layer, with the layout's display-only break marks undone."""
    text = page.get_text(flags=_TEXT_FLAGS)
    return unmark_breaks(text) if isinstance(doc, _LaidOutDocument) else text


def _canonical_zoom(rect: pymupdf.Rect) -> float:
    """Page points -> canonical pixels: the long side becomes CANONICAL.size."""
    return CANONICAL.size / max(rect.width, rect.height)


def _canonical_offset(width: int, height: int) -> tuple[int, int]:
    """Where a rendered page of this size sits on the canonical square: centred."""
    return (CANONICAL.size - width) // 2, (CANONICAL.size - height) // 2


_WORD_FLAGS = pymupdf.TEXTFLAGS_WORDS & ~pymupdf.TEXT_PRESERVE_LIGATURES  # "ff", as the text


def word_boxes(pdf: bytes) -> list[list[tuple[float, float, float, float, str]]]:
    """Per page of an in-memory PDF, its words as (x0, y0, x1, y1, word) in the pixels of the
    page's canonical render (render_page's zoom and centring)."""
    out = []
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        for page in doc:
            rect = page.rect
            zoom = _canonical_zoom(rect)
            dx, dy = _canonical_offset(
                min(round(rect.width * zoom), CANONICAL.size),
                min(round(rect.height * zoom), CANONICAL.size),
            )
            out.append([
                (round((x0 - rect.x0) * zoom + dx, 1), round((y0 - rect.y0) * zoom + dy, 1),
                 round((x1 - rect.x0) * zoom + dx, 1), round((y1 - rect.y0) * zoom + dy, 1), w)
                for x0, y0, x1, y1, w, *_ in page.get_text("words", flags=_WORD_FLAGS)
            ])  # fmt: skip
    return out


def render_pdf_bytes(pdf: bytes) -> list[RenderedPage]:
    """Every page of an in-memory PDF (a few pages, e.g. from ``layout_styled_html``) rendered
    exactly as an uploaded document's pages are."""
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        return [render_page(doc, n) for n in range(1, doc.page_count + 1)]


def page_hash(image: Image.Image, text: str) -> str:
    """sha256 hex of the canonical render's raw RGB bytes, then the text as UTF-8.

    The pixel bytes have a fixed length (size * size * 3), so the concatenation is unambiguous.
    Identical pages in different documents hash the same and share their cached tokens.
    """
    digest = hashlib.sha256(image.tobytes())
    digest.update(text.encode("utf-8", errors="surrogatepass"))
    return digest.hexdigest()


CROP_PAD = 16  # canonical pixels of paper kept around the ink
CROP_MIN_SIDE = CANONICAL.size // 2  # at most 2x: a page of one short line is not blown up more
INK_LEVEL = 40  # grey levels below white that count as ink: anti-aliasing fringes do not


def content_square(image: Image.Image) -> tuple[int, int, int]:
    """(x, y, side): the square of a canonical render that the cropping tiers show. It starts
    CROP_PAD above and left of the ink's top-left corner and spans the ink's larger extent plus
    padding (at least CROP_MIN_SIDE), kept inside the render. A blank page, or ink from edge to
    edge (a scan, a photo), gives the whole render: (0, 0, CANONICAL.size)."""
    size = CANONICAL.size
    ink = image.convert("L").point(lambda v: 255 if v < 255 - INK_LEVEL else 0).getbbox()
    if ink is None:
        return 0, 0, size
    x0, y0, x1, y1 = ink
    side = min(size, max(CROP_MIN_SIDE, max(x1 - x0, y1 - y0) + 2 * CROP_PAD))
    x = min(max(0, x0 - CROP_PAD), size - side)
    y = min(max(0, y0 - CROP_PAD), size - side)
    return x, y, side


def crop_words(words: list, square: tuple[int, int, int]) -> list:
    """Word boxes (x0, y0, x1, y1, word) in canonical pixels -> the same words in the canonical
    pixels of ``content_square``'s crop scaled back to the full render (where a cropping tier's
    image puts them, at CANONICAL.size)."""
    x, y, side = square
    k = CANONICAL.size / side
    return [((w[0] - x) * k, (w[1] - y) * k, (w[2] - x) * k, (w[3] - y) * k, w[4]) for w in words]


def tier_image(image: Image.Image, tier: str) -> Image.Image:
    """The canonical render at a vision tier's resolution; "base" returns `image` itself. A
    tier that crops (ingest.tiers) shows `content_square` of it.

    Downscaled with LANCZOS, so small text stays as legible as the pixel count allows.
    """
    if tier == TEXT:
        raise ValueError("the text tier has no image; use RenderedPage.text")
    spec = get_tier(tier)
    if image.size != (CANONICAL.size, CANONICAL.size):
        raise ValueError(
            f"expected a {CANONICAL.size}x{CANONICAL.size} canonical render, got "
            f"{image.width}x{image.height}"
        )
    if spec.crop:
        x, y, side = content_square(image)
        if side < CANONICAL.size:
            image = image.crop((x, y, x + side, y + side))
    if image.size == (spec.size, spec.size):
        return image
    return image.resize((spec.size, spec.size), Image.Resampling.LANCZOS)


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG (lossless: the page images are what the encoder sees).

    zlib level 1, not Pillow's 6: a rendered page (flat paper, few grays) comes out no larger
    (116 KB against 124 KB) in half the time (27 against 60 ms on this CPU), and every page of
    every upload goes through here once."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _check_container(path: Path, ext: str) -> None:
    """Inflate the zip (bounded, whatever its headers say); refuse an EPUB chapter too big to lay
    out."""
    what = f"the {_FORMAT_NAMES[ext]}"
    members = check_zip(path, what)  # after this, the declared sizes are the real ones
    if ext == ".epub":
        chapters = [m for m in members if m.filename.lower().endswith((".xhtml", ".html", ".htm"))]
        biggest = max(chapters, key=lambda m: m.file_size, default=None)
        if biggest is not None and biggest.file_size > MAX_EPUB_CHAPTER_BYTES:
            raise DocumentTooLarge(
                f"a chapter of the EPUB book is {biggest.file_size / 2**20:.0f} MB of text; the "
                f"limit is {MAX_EPUB_CHAPTER_BYTES // 2**20} MB per chapter. Split the book or "
                "upload a PDF export"
            )


def _open_with_pymupdf(path: Path, ext: str) -> pymupdf.Document:
    what = _FORMAT_NAMES.get(ext, "document")
    try:
        return pymupdf.open(path, filetype=ext.lstrip("."))
    except _MUPDF_ERRORS as exc:  # FileDataError for damaged files; RuntimeError variants otherwise
        raise CorruptDocument(
            f"the {what} could not be opened; it is damaged or not a valid {what}. "
            "Check that it opens on your computer and upload it again"
        ) from exc


def _prepare(doc: pymupdf.Document, ext: str, max_pages: int | None) -> None:
    """Unlock, lay out (EPUB) and check that there is a page to render and not too many."""
    try:
        _unlock(doc)
        if ext == ".epub":  # reflowable: lay out onto the same A4 pages as our text formats
            doc.layout(rect=PAGE, fontsize=11)
            # MuPDF lays out a chapter when its pages are first counted: count chapter by
            # chapter, so a book over the cap stops there instead of being laid out whole.
            page_count = 0
            for chapter in range(doc.chapter_count):
                page_count += doc.chapter_page_count(chapter)
                if max_pages is not None and page_count > max_pages:
                    raise TooManyPages(max_pages)
        page_count = doc.page_count
    except IngestError:
        raise
    except _MUPDF_ERRORS as exc:  # MuPDF fails late on some damaged files (EPUB chapters, xref)
        what = _FORMAT_NAMES.get(ext, "document")
        raise CorruptDocument(f"the {what} is damaged and could not be read") from exc
    if max_pages is not None and page_count > max_pages:
        raise TooManyPages(max_pages)
    if page_count == 0:
        if doc.is_pdf and doc.is_repaired:
            raise CorruptDocument("the PDF is damaged: none of its pages could be read")
        raise EmptyDocument("the document has no pages")


def _unlock(doc: pymupdf.Document) -> None:
    """Open PDFs that have only an owner password; refuse those that need a user password.

    An owner password only restricts printing or copying in viewers, and MuPDF opens such files
    with the empty user password, as every reader does. We never ask for a password.
    """
    if doc.needs_pass and not doc.authenticate(""):
        raise EncryptedDocument(
            "the PDF is protected with a password; upload a copy without a password"
        )


def _check_image_size(path: Path, max_pages: int | None) -> None:
    """Refuse decompression bombs and TIFFs with too many pages before MuPDF decodes them
    (Pillow only reads the headers)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                frames = getattr(image, "n_frames", 1)
                if max_pages is not None and frames > max_pages:
                    raise TooManyPages(max_pages)
                for index in range(frames):
                    image.seek(index)
                    if image.width * image.height > MAX_IMAGE_PIXELS:
                        raise DocumentTooLarge(
                            f"the image is {image.width} x {image.height} pixels; the limit is "
                            f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels. Scale it down and "
                            "upload it again"
                        )
    except IngestError:
        raise
    except Image.DecompressionBombError as exc:
        raise DocumentTooLarge(
            f"the image is too large; the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels. "
            "Scale it down and upload it again"
        ) from exc
    except Exception as exc:  # UnidentifiedImageError, truncated headers, bad TIFF tags
        raise CorruptDocument(
            "the image could not be read; it is damaged or not a valid image file"
        ) from exc


__all__ = [
    "RenderedPage",
    "TextSource",
    "content_square",
    "count_pages",
    "crop_words",
    "iter_page_chunks",
    "open_document",
    "page_chunks",
    "page_hash",
    "png_bytes",
    "render_page",
    "render_pdf_bytes",
    "tier_image",
]
