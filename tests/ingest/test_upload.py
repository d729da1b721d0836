"""Upload checks: safe names, extensions, and contents that must match them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ingest import (
    SUPPORTED_EXTENSIONS,
    EmptyDocument,
    IngestError,
    UnsupportedFormat,
    check_upload,
    safe_filename,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
ZIP = b"PK\x03\x04" + b"\x00" * 32
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"


def test_supported_extensions_are_the_documented_ones():
    assert SUPPORTED_EXTENSIONS == {
        ".pdf", ".xps", ".epub", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
        ".txt", ".md", ".html", ".htm", ".docx",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\x\\y.pdf", "y.pdf"),
        ("C:y.pdf", "y.pdf"),
        ("/abs/path/report.pdf", "report.pdf"),
        ("dir\\..\\..\\evil.txt", "evil.txt"),
        ("  report.pdf  ", "report.pdf"),
        ("a\x00b\nc.pdf", "abc.pdf"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),  # right-to-left override removed
        ("Über straße.md", "Über straße.md"),
    ],
)
def test_safe_filename_strips_paths_and_control_characters(name, expected):
    assert safe_filename(name) == expected


@pytest.mark.parametrize("name", ["", "..", ".", "/", "a/b/", "C:\\", "  ", "\x00\x01"])
def test_safe_filename_refuses_names_with_nothing_usable(name):
    with pytest.raises(IngestError, match="file name"):
        safe_filename(name)


def test_safe_filename_truncates_long_names_but_keeps_the_extension():
    name = safe_filename("x" * 500 + ".pdf")
    assert len(name) == 255
    assert name.endswith(".pdf")
    assert len(safe_filename("y" * 500)) == 255


@pytest.mark.parametrize("char", ["日", "é", "😀", "e\u0301"])
def test_safe_filename_cuts_long_utf8_names_by_bytes_between_characters(char: str):
    name = safe_filename(char * 300 + ".pdf")
    assert len(name.encode()) <= 255 and name.endswith(".pdf")
    assert len(name.encode()) > 255 - 8  # cut at the last whole character, not far before
    stem = name.removesuffix(".pdf")
    assert stem == stem[0] * len(stem)  # whole characters only (NFC: e + accent is one)
    assert len(safe_filename(char * 300).encode()) <= 255


@pytest.mark.parametrize(
    ("filename", "head", "ext"),
    [
        ("report.pdf", PDF, ".pdf"),
        ("REPORT.PDF", PDF, ".pdf"),
        ("scan.png", PNG, ".png"),
        ("photo.JPG", JPEG, ".jpg"),
        ("photo.jpeg", JPEG, ".jpeg"),
        ("scan.tif", b"II*\x00" + b"\x00" * 8, ".tif"),
        ("scan.tiff", b"MM\x00*" + b"\x00" * 8, ".tiff"),
        ("letter.docx", ZIP, ".docx"),
        ("book.epub", ZIP, ".epub"),
        ("form.xps", ZIP, ".xps"),
        ("notes.txt", "plain text, café".encode(), ".txt"),
        ("notes.txt", "UTF-16 text".encode("utf-16"), ".txt"),
        ("README.md", b"# Title\n", ".md"),
        ("page.html", b"<!doctype html><p>hi", ".html"),
        ("page.htm", b"<p>hi", ".htm"),
        ("../../uploads/report.pdf", PDF, ".pdf"),
    ],
)
def test_check_upload_accepts_matching_contents(filename, head, ext):
    assert check_upload(filename, head) == ext


def test_check_upload_accepts_junk_before_the_pdf_header_like_real_readers():
    assert check_upload("a.pdf", b"\r\n   garbage from a mail gateway\n" + PDF) == ".pdf"
    with pytest.raises(UnsupportedFormat, match="not a PDF"):
        check_upload("a.pdf", b" " * 1100 + PDF)


@pytest.mark.parametrize("filename", ["virus.exe", "archive.tar.gz", "slides.pptx", "old.doc"])
def test_check_upload_refuses_unknown_extensions(filename):
    with pytest.raises(UnsupportedFormat, match="not supported") as info:
        check_upload(filename, b"whatever")
    assert "PDF" in str(info.value)  # tells the user what they can upload


def test_check_upload_refuses_a_file_without_extension():
    with pytest.raises(UnsupportedFormat, match="no extension"):
        check_upload("README", b"text")


def test_check_upload_refuses_an_empty_file():
    with pytest.raises(EmptyDocument, match="empty"):
        check_upload("report.pdf", b"")


@pytest.mark.parametrize(
    ("filename", "head", "message"),
    [
        ("report.pdf", PNG, "is a PNG image, not a PDF; rename it to .png"),
        ("report.pdf", b"Hello, this is text", "is not a PDF"),
        ("scan.png", JPEG, "rename it to .jpg"),
        ("photo.jpg", PNG, "rename it to .png"),
        ("scan.tiff", PNG, "not a TIFF"),
        ("letter.docx", PDF, "rename it to .pdf"),
        ("letter.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 8, "old-style Word .doc"),
        ("book.epub", b"<html>", "not an EPUB book"),
        ("notes.txt", b"plain\x00binary\x00", "binary data"),
        ("notes.txt", PDF, "rename it to .pdf"),
        ("scan.tif", b"II+\x00\x08\x00\x00\x00", "BigTIFF"),
    ],
)
def test_check_upload_refuses_contents_that_do_not_match(filename, head, message):
    with pytest.raises(UnsupportedFormat, match=message):
        check_upload(filename, head)


def test_ingest_imports_none_of_the_packages_that_depend_on_it():
    """ingest sits below kb, api and workers; importing it must not pull any of them in."""
    code = (
        "import sys, ingest; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'kb', 'api', 'workers', 'fastapi', 'celery'}); print(bad)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
