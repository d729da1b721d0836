"""Errors raised while ingesting a document.

`str(error)` is shown verbatim to the person who uploaded the file (the document's `error` field),
so every message says what is wrong in plain words and, where there is one, what to do about it.
The technical cause, when there is one, is chained (`raise ... from exc`) for the logs.
"""

from __future__ import annotations


class IngestError(Exception):
    """A document cannot be ingested; the message is written for the uploader."""


class UnsupportedFormat(IngestError):
    """Unknown extension, or contents that do not match the extension (a .pdf that is a PNG)."""


class CorruptDocument(IngestError):
    """The file has the right type but cannot be read, or one of its pages cannot be rendered."""


class EncryptedDocument(IngestError):
    """The document needs a password to open; we never ask for one."""


class EmptyDocument(IngestError):
    """Zero bytes, zero pages, or a text document with nothing but whitespace."""


class DocumentTooLarge(IngestError):
    """Over a size limit that protects a worker's memory (text size, image pixels, page count)."""


class TooManyPages(DocumentTooLarge):
    """More pages than the per-document cap (the `max_pages_per_document` setting)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the document has more than {limit} pages, the limit per document "
            "(max_pages_per_document); split it into smaller files"
        )
        self.limit = limit
