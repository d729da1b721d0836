"""Documents -> page images: format loaders, page hashing, tier resolutions.

Callers (the API and the workers) use only what is exported here:

    ext = check_upload(filename, first_bytes)          # at upload time
    ocr = TesseractReader()                            # once per process (kb.context)
    with open_document(path, ext, max_pages=settings.max_pages_per_document) as doc:
        n = doc.page_count                             # checked against max_pages already
        for chunk in page_chunks(doc, start=resume_from, ocr=ocr):
            for page in chunk:
                png_bytes(tier_image(page.image, "small")), page.text, page.content_hash
                page.text_source                       # TextSource.TEXT_LAYER or .OCR

Every failure a user can cause raises an IngestError subclass whose message is meant for them.
This package imports neither `kb`, `api` nor `workers`: data flows from here, never back.
"""

from ingest.errors import (
    CorruptDocument,
    DocumentTooLarge,
    EmptyDocument,
    EncryptedDocument,
    IngestError,
    TooManyPages,
    UnsupportedFormat,
)
from ingest.layout import FONT_FACES, layout_styled_html
from ingest.ocr import PageReader, TesseractReader
from ingest.render import (
    MAX_IMAGE_PIXELS,
    RenderedPage,
    TextSource,
    content_square,
    count_pages,
    crop_words,
    iter_page_chunks,
    open_document,
    page_chunks,
    page_hash,
    png_bytes,
    render_page,
    render_pdf_bytes,
    tier_image,
    word_boxes,
)
from ingest.text_formats import MAX_TEXT_BYTES
from ingest.upload import SNIFF_BYTES, SUPPORTED_EXTENSIONS, check_upload, safe_filename

__all__ = [
    "FONT_FACES",
    "MAX_IMAGE_PIXELS",
    "MAX_TEXT_BYTES",
    "SNIFF_BYTES",
    "SUPPORTED_EXTENSIONS",
    "CorruptDocument",
    "DocumentTooLarge",
    "EmptyDocument",
    "EncryptedDocument",
    "IngestError",
    "PageReader",
    "RenderedPage",
    "TesseractReader",
    "TextSource",
    "TooManyPages",
    "UnsupportedFormat",
    "check_upload",
    "content_square",
    "count_pages",
    "crop_words",
    "iter_page_chunks",
    "layout_styled_html",
    "open_document",
    "page_chunks",
    "page_hash",
    "png_bytes",
    "render_page",
    "render_pdf_bytes",
    "word_boxes",
    "safe_filename",
    "tier_image",
]
