"""Checks made on an upload before anything is stored or queued: a safe name, a known type.

The API runs these on the first bytes of the request body so that a wrong or empty file is refused
at once (415 / 422) instead of failing minutes later in a worker. The loaders run the same magic
check again when they open the file, because a worker must not trust what it was handed.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePath

from ingest.errors import EmptyDocument, IngestError, UnsupportedFormat

# What a user may upload, by extension. The loader for each lives in ingest.render.
FIXED_LAYOUT_EXTENSIONS = frozenset({".pdf", ".xps"})
REFLOWABLE_EXTENSIONS = frozenset({".epub"})  # pymupdf lays it out onto A4 pages
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
TEXT_EXTENSIONS = frozenset({".txt", ".md", ".html", ".htm", ".docx"})  # we lay these out ourselves
SUPPORTED_EXTENSIONS: frozenset[str] = (
    FIXED_LAYOUT_EXTENSIONS | REFLOWABLE_EXTENSIONS | IMAGE_EXTENSIONS | TEXT_EXTENSIONS
)

SNIFF_BYTES = 1024  # pass at least this many leading bytes to check_upload: PDF readers accept
# a %PDF header anywhere in the first 1024 bytes (some generators put junk before it)
# Counted in UTF-8 bytes, not characters: 255 bytes is a file name's limit on every common file
# system (NAME_MAX), and 200 Japanese characters are 600 bytes.
MAX_FILENAME_BYTES = 255

_SUPPORTED_HINT = "PDF, XPS, EPUB, PNG, JPEG, TIFF, TXT, Markdown (.md), HTML or Word (.docx)"
_TYPE_NAMES = {
    ".pdf": "a PDF",
    ".xps": "an XPS document",
    ".epub": "an EPUB book",
    ".png": "a PNG image",
    ".jpg": "a JPEG image",
    ".jpeg": "a JPEG image",
    ".tif": "a TIFF image",
    ".tiff": "a TIFF image",
    ".docx": "a Word document",
}
_ZIP = b"PK\x03\x04"
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy Office: .doc, .xls, .ppt
# (signature, what it is, the extension it should have) for telling the user what they sent.
_KNOWN_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"%PDF-", "a PDF", ".pdf"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image", ".png"),
    (b"\xff\xd8\xff", "a JPEG image", ".jpg"),
    (b"II*\x00", "a TIFF image", ".tiff"),
    (b"MM\x00*", "a TIFF image", ".tiff"),
    (b"II+\x00", "a BigTIFF image", ""),
    (b"MM\x00+", "a BigTIFF image", ""),
    (b"GIF8", "a GIF image", ""),
    (_OLE, "an old-style Office file (.doc, .xls or .ppt)", ""),
    (_ZIP, "a zip archive", ""),
)
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-32 LE starts with the UTF-16 LE BOM


def normalize_extension(ext: str) -> str:
    """Normalize ".PDF" or "pdf" to ".pdf"; raise UnsupportedFormat for what we cannot ingest."""
    ext = ext.strip().lower()
    if ext and not ext.startswith("."):
        ext = "." + ext
    if ext not in SUPPORTED_EXTENSIONS:
        if not ext:
            raise UnsupportedFormat(
                f"the file has no extension, so its type is unknown; upload a {_SUPPORTED_HINT} "
                "file with the matching extension"
            )
        raise UnsupportedFormat(f"{ext} files are not supported; upload one of: {_SUPPORTED_HINT}")
    return ext


def safe_filename(name: str) -> str:
    """The display name of an upload, with no way to smuggle a path or control characters through.

    Browsers on Windows may send "C:\\Users\\me\\report.pdf" and attackers "../../etc/passwd", so
    only the last path component is kept, whichever separator was used. Control and invisible
    format characters (NUL, newlines, right-to-left overrides that disguise "exe.pdf") are
    dropped. The name is only ever displayed or used as a download name; storage keys are ids.
    """
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"^[A-Za-z]:", "", name)  # "C:report.pdf", a drive-relative Windows path
    name = name.strip()
    if not name.strip(". "):
        raise IngestError(
            "the file name is empty or unusable; give the file a name like report.pdf"
        )
    if len(name.encode()) > MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and 0 < len(ext) <= 16:  # keep the extension: it decides the loader
            room = MAX_FILENAME_BYTES - len(ext.encode()) - 1
            name = _cut_utf8(stem, room).rstrip() + "." + ext
        else:
            name = _cut_utf8(name, MAX_FILENAME_BYTES).rstrip()
    return name


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest start of `text` that is at most `max_bytes` in UTF-8, cut between characters."""
    return text.encode()[:max_bytes].decode("utf-8", errors="ignore")


def extension_of(filename: str) -> str:
    """The lower-cased extension of an uploaded file's name ("" if it has none)."""
    return PurePath(filename.replace("\\", "/")).suffix.lower()


def check_upload(filename: str, head: bytes) -> str:
    """Validate an upload from its name and first bytes; return its normalized extension.

    `head` should be the first SNIFF_BYTES bytes of the file (fewer only if the file is shorter).
    Raises UnsupportedFormat for an unknown extension or contents that do not match it,
    EmptyDocument for a zero-byte file.
    """
    ext = normalize_extension(extension_of(safe_filename(filename)))
    if not head:
        raise EmptyDocument("the file is empty (0 bytes); upload the document again")
    check_magic(ext, head)
    return ext


def check_magic(ext: str, head: bytes) -> None:
    """Raise UnsupportedFormat unless the first bytes of a file fit its (normalized) extension."""
    if ext == ".pdf":
        if b"%PDF-" not in head[:SNIFF_BYTES]:
            raise _mismatch(ext, head)
    elif ext in (".png",):
        if not head.startswith(b"\x89PNG\r\n\x1a\n"):
            raise _mismatch(ext, head)
    elif ext in (".jpg", ".jpeg"):
        if not head.startswith(b"\xff\xd8\xff"):
            raise _mismatch(ext, head)
    elif ext in (".tif", ".tiff"):
        if head.startswith((b"II+\x00", b"MM\x00+")):
            raise UnsupportedFormat(
                "BigTIFF images are not supported; save the image as a standard TIFF, PNG or PDF"
            )
        if not head.startswith((b"II*\x00", b"MM\x00*")):
            raise _mismatch(ext, head)
    elif ext in (".docx", ".epub", ".xps"):
        if head.startswith(_OLE) and ext == ".docx":
            raise UnsupportedFormat(
                "this is an old-style Word .doc file renamed to .docx; open it in Word and "
                "save it as .docx (or export it as PDF)"
            )
        if not head.startswith(_ZIP):  # all three are zip containers
            raise _mismatch(ext, head)
    elif ext in TEXT_EXTENSIONS:  # .txt, .md, .html, .htm
        if head.startswith(_UTF16_32_BOMS):
            return
        if any(head.startswith(signature) for signature, _, _ in _KNOWN_SIGNATURES):
            raise _mismatch(ext, head)
        if b"\x00" in head:
            raise UnsupportedFormat(
                f"the file is named {ext} but contains binary data, not text; upload the "
                "document in its original format"
            )


def _mismatch(ext: str, head: bytes) -> UnsupportedFormat:
    """Say what the file claims to be and, when we can tell, what it really is."""
    claimed = _TYPE_NAMES.get(ext, "a text file")
    for signature, what, right_ext in _KNOWN_SIGNATURES:
        if head.startswith(signature):
            fix = (
                f"rename it to {right_ext}"
                if right_ext and right_ext != ext
                else f"convert it to one of: {_SUPPORTED_HINT}"
            )
            return UnsupportedFormat(f"the file is named {ext} but is {what}, not {claimed}; {fix}")
    return UnsupportedFormat(
        f"the file is named {ext} but is not {claimed}; check that it was saved or exported "
        "correctly"
    )
