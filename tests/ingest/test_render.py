"""Rendering fixed-layout documents and images: pages, text, hashes, tiers, chunks, errors."""

from __future__ import annotations

import io
import weakref
from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageChops

import ingest.render
from ingest import (
    CorruptDocument,
    DocumentTooLarge,
    EmptyDocument,
    EncryptedDocument,
    RenderedPage,
    UnsupportedFormat,
    content_square,
    count_pages,
    crop_words,
    iter_page_chunks,
    png_bytes,
    render_pdf_bytes,
    tier_image,
    word_boxes,
)
from ingest.tiers import CANONICAL, VISION_TIERS
from tests.ingest.samples import make_epub, make_pdf, make_xps, make_zero_page_pdf


def all_pages(path: Path, ext: str, **kwargs) -> list[RenderedPage]:
    return [page for chunk in iter_page_chunks(path, ext, **kwargs) for page in chunk]


def ink_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box of everything that is not pure white."""
    white = Image.new("RGB", image.size, "white")
    return ImageChops.difference(image, white).getbbox()


# --- PDF --------------------------------------------------------------------------------------


def test_pdf_pages_are_numbered_rendered_square_and_carry_their_text(tmp_path):
    path = make_pdf(tmp_path / "a.pdf", ["alpha page", "beta page", "gamma page"])
    assert count_pages(path, ".pdf") == 3
    pages = all_pages(path, ".pdf")
    assert [p.number for p in pages] == [1, 2, 3]
    for page, word in zip(pages, ["alpha", "beta", "gamma"], strict=True):
        assert page.image.mode == "RGB"
        assert page.image.size == (CANONICAL.size, CANONICAL.size)
        assert word in page.text
        assert all(other not in page.text for other in {"alpha", "beta", "gamma"} - {word})
        assert len(page.content_hash) == 64


def test_a_portrait_page_fills_the_height_and_is_centered_on_white(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.draw_rect(page.rect, color=None, fill=(0, 0, 0))  # ink edge to edge
    doc.save(tmp_path / "black.pdf")
    (rendered,) = all_pages(tmp_path / "black.pdf", ".pdf")
    left, top, right, bottom = ink_box(rendered.image)
    assert (top, bottom) == (0, 1024)
    assert abs((right - left) - round(1024 * 595 / 842)) <= 1
    assert abs(left - (1024 - right)) <= 1  # centered
    assert rendered.image.getpixel((10, 512)) == (255, 255, 255)  # padding is white


def test_a_landscape_page_fills_the_width(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page(width=842, height=595)
    page.draw_rect(page.rect, color=None, fill=(0, 0, 0))
    doc.save(tmp_path / "wide.pdf")
    (rendered,) = all_pages(tmp_path / "wide.pdf", ".pdf")
    left, top, right, bottom = ink_box(rendered.image)
    assert (left, right) == (0, 1024)
    assert abs((bottom - top) - round(1024 * 595 / 842)) <= 1
    assert abs(top - (1024 - bottom)) <= 1


def test_identical_pages_hash_identically_across_documents(tmp_path):
    first = all_pages(make_pdf(tmp_path / "a.pdf", ["shared page", "only in a"]), ".pdf")
    second = all_pages(make_pdf(tmp_path / "b.pdf", ["only in b", "shared page"]), ".pdf")
    assert first[0].content_hash == second[1].content_hash
    assert first[0].content_hash != first[1].content_hash
    assert first[1].content_hash != second[0].content_hash
    assert len({p.content_hash for p in first + second}) == 3


def test_the_hash_covers_the_text_as_well_as_the_pixels(tmp_path):
    (page,) = all_pages(make_pdf(tmp_path / "a.pdf", ["some text"]), ".pdf")
    assert ingest.render.page_hash(page.image, page.text) == page.content_hash
    assert ingest.render.page_hash(page.image, page.text + "x") != page.content_hash


def test_rendering_is_deterministic(tmp_path):
    path = make_pdf(tmp_path / "a.pdf", ["same every time"])
    assert all_pages(path, ".pdf")[0].content_hash == all_pages(path, ".pdf")[0].content_hash


def test_a_file_stored_without_extension_opens_by_the_extension_given(tmp_path):
    path = make_pdf(tmp_path / "a.pdf", ["one", "two"])
    stored = path.rename(tmp_path / "4f1c0b2e")  # how an object store key looks
    assert count_pages(stored, ".PDF") == 2


# --- chunks -----------------------------------------------------------------------------------


def test_chunks_of_a_40_page_pdf_are_16_16_8_and_numbered_1_to_40(tmp_path):
    path = make_pdf(tmp_path / "forty.pdf", [f"page number {i}" for i in range(1, 41)])
    chunks = list(iter_page_chunks(path, ".pdf", chunk_size=16))
    assert [len(c) for c in chunks] == [16, 16, 8]
    pages = [p for c in chunks for p in c]
    assert [p.number for p in pages] == list(range(1, 41))
    assert all(f"page number {p.number}\n" in p.text for p in pages)


def test_start_resumes_a_retried_task(tmp_path):
    path = make_pdf(tmp_path / "forty.pdf", [f"page number {i}" for i in range(1, 41)])
    chunks = list(iter_page_chunks(path, ".pdf", chunk_size=16, start=17))
    assert [[p.number for p in c] for c in chunks] == [list(range(17, 33)), list(range(33, 41))]
    assert "page number 17" in chunks[0][0].text
    assert [[p.number for p in c] for c in iter_page_chunks(path, ".pdf", start=40)] == [[40]]
    assert list(iter_page_chunks(path, ".pdf", start=41)) == []  # already done: nothing to do


@pytest.mark.parametrize(("chunk_size", "start"), [(0, 1), (16, 0), (-1, 1)])
def test_bad_chunk_arguments_are_refused(tmp_path, chunk_size, start):
    path = make_pdf(tmp_path / "a.pdf", ["x"])
    with pytest.raises(ValueError):
        next(iter_page_chunks(path, ".pdf", chunk_size=chunk_size, start=start))


def test_iterating_300_pages_keeps_at_most_one_chunk_alive(tmp_path, monkeypatch):
    """While a chunk renders, no page of an earlier chunk may still be referenced by the iterator.

    Every rendered page is tracked with a weak reference; the consumer drops each chunk when done
    with it (as a worker does after storing it), so whatever is still alive when the next page
    renders is being held by iter_page_chunks itself.
    """
    path = make_pdf(tmp_path / "long.pdf", [f"p{i}" for i in range(300)], size=(300, 400))
    rendered: list[weakref.ref] = []  # to each page and each page's image
    most_alive = 0
    real_render = ingest.render.render_page

    def tracking_render(doc, number, ocr=None):
        nonlocal most_alive
        most_alive = max(most_alive, sum(ref() is not None for ref in rendered) // 2)
        page = real_render(doc, number, ocr)
        rendered.extend((weakref.ref(page), weakref.ref(page.image)))
        return page

    monkeypatch.setattr(ingest.render, "render_page", tracking_render)
    seen = 0
    for chunk in iter_page_chunks(path, ".pdf", chunk_size=16):
        seen += len(chunk)
        del chunk
    assert seen == 300
    assert most_alive <= 15  # only the pages of the chunk being built (at most 16 - 1)


def test_abandoning_the_iterator_closes_the_document(tmp_path, monkeypatch):
    path = make_pdf(tmp_path / "a.pdf", [str(i) for i in range(40)])
    closed = []
    real_close = pymupdf.Document.close
    monkeypatch.setattr(
        pymupdf.Document, "close", lambda self: closed.append(1) or real_close(self)
    )
    chunks = iter_page_chunks(path, ".pdf", chunk_size=4)
    next(chunks)
    assert closed == []
    chunks.close()  # what happens when a task is cancelled mid-document
    assert closed == [1]


# --- tiers and PNG ----------------------------------------------------------------------------


def test_tier_images_have_each_tier_size_and_base_is_the_canonical_render(tmp_path):
    (page,) = all_pages(make_pdf(tmp_path / "a.pdf", ["tiers"]), ".pdf")
    for tier in VISION_TIERS:
        image = tier_image(page.image, tier.name)
        assert image.size == (tier.size, tier.size)
        assert image.mode == "RGB"
    assert tier_image(page.image, "base") is page.image
    with pytest.raises(ValueError, match="text tier"):
        tier_image(page.image, "text")
    with pytest.raises(ValueError, match="unknown tier"):
        tier_image(page.image, "huge")
    with pytest.raises(ValueError, match="1024x1024"):
        tier_image(Image.new("RGB", (640, 640)), "small")


def test_the_smaller_tiers_show_the_square_around_the_ink_and_words_follow_it(tmp_path):
    path = make_pdf(tmp_path / "a.pdf", ["A short note on one line, then nothing else."])
    raw = path.read_bytes()
    (page,), (words,) = render_pdf_bytes(raw), word_boxes(raw)
    x, y, side = content_square(page.image)
    ink = ink_box(page.image)
    assert ink is not None
    # The square holds all the ink, from just above and left of it, and is no smaller than half
    # the render (a one-line page is enlarged at most twice).
    assert side == CANONICAL.size // 2
    assert x <= ink[0] and y <= ink[1] and ink[2] <= x + side and ink[3] <= y + side
    assert ink[0] - x <= 16 and ink[1] - y <= 16
    for tier in VISION_TIERS:
        image = tier_image(page.image, tier.name)
        scale = tier.size / CANONICAL.size
        for x0, y0, x1, y1, word in crop_words(words, (x, y, side)) if tier.crop else words:
            # Each word's box, where this tier's image puts it, is on ink.
            box = [round(v * scale) for v in (x0, y0, x1, y1)]
            assert ink_box(image.crop(box)) is not None, (tier.name, word)
    small, plain = tier_image(page.image, "small"), page.image.resize((640, 640))
    assert ink_box(small)[2] - ink_box(small)[0] > 1.8 * (ink_box(plain)[2] - ink_box(plain)[0])
    # A blank page and a page inked edge to edge are shown whole.
    assert content_square(Image.new("RGB", (1024, 1024), "white")) == (0, 0, 1024)
    framed = Image.new("RGB", (1024, 1024), "white")
    framed.paste((0, 0, 0), (0, 0, 1024, 4))
    framed.paste((0, 0, 0), (0, 1020, 1024, 1024))
    assert content_square(framed) == (0, 0, 1024)


def test_png_bytes_round_trip_losslessly(tmp_path):
    (page,) = all_pages(make_pdf(tmp_path / "a.pdf", ["png"]), ".pdf")
    small = tier_image(page.image, "small")
    data = png_bytes(small)
    assert data.startswith(b"\x89PNG")
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    assert decoded.tobytes() == small.tobytes()


# --- errors -----------------------------------------------------------------------------------


def test_a_pdf_that_needs_a_password_is_refused_clearly(tmp_path):
    path = make_pdf(
        tmp_path / "locked.pdf",
        ["secret"],
        encryption=pymupdf.PDF_ENCRYPT_AES_256,
        user_pw="user-secret",
        owner_pw="owner-secret",
    )
    with pytest.raises(EncryptedDocument, match="password") as info:
        count_pages(path, ".pdf")
    assert "without a password" in str(info.value)
    with pytest.raises(EncryptedDocument):
        next(iter_page_chunks(path, ".pdf"))


def test_a_pdf_with_only_an_owner_password_opens(tmp_path):
    path = make_pdf(
        tmp_path / "restricted.pdf",
        ["one", "two", "three"],
        encryption=pymupdf.PDF_ENCRYPT_AES_256,
        owner_pw="owner-secret",
        permissions=pymupdf.PDF_PERM_ACCESSIBILITY,  # no printing, no copying
    )
    assert "AES" in pymupdf.open(path).metadata["encryption"]  # really encrypted
    assert count_pages(path, ".pdf") == 3
    assert "two" in all_pages(path, ".pdf")[1].text


def test_a_corrupt_pdf_raises_corrupt_document(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    with pytest.raises(CorruptDocument, match="could not be opened") as info:
        count_pages(path, ".pdf")
    assert "damaged" in str(info.value)


def test_a_pdf_that_is_not_a_pdf_is_unsupported(tmp_path):
    path = tmp_path / "fake.pdf"
    path.write_text("just some text pretending to be a PDF")
    with pytest.raises(UnsupportedFormat, match="is not a PDF"):
        count_pages(path, ".pdf")


def test_a_truncated_pdf_is_repaired_and_keeps_what_it_can(tmp_path):
    # no_new_id: pymupdf otherwise writes a random trailer /ID whose length varies, so the same
    # pages made files of different sizes and a cut at a fixed fraction landed in different
    # places (sometimes inside an object's dictionary, which cannot be repaired).
    pages = ["first", "second", "third"]
    data = make_pdf(tmp_path / "a.pdf", pages, no_new_id=True).read_bytes()
    assert make_pdf(tmp_path / "b.pdf", pages, no_new_id=True).read_bytes() == data
    # Cut where an interrupted upload would leave the last page: inside its content stream,
    # with the xref and the trailer gone.
    cut = data.rindex(b">>\nstream\n") + len(b">>\nstream\n")
    assert data.index(b"xref") > cut
    path = tmp_path / "truncated.pdf"
    path.write_bytes(data[:cut])
    repaired = all_pages(path, ".pdf")  # readers repair this; so do we
    assert "first" in repaired[0].text and "second" in repaired[1].text


def test_a_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "empty.pdf"
    path.touch()
    with pytest.raises(EmptyDocument, match="empty"):
        count_pages(path, ".pdf")
    with pytest.raises(EmptyDocument):
        next(iter_page_chunks(path, ".pdf"))


def test_a_pdf_without_pages_is_empty(tmp_path):
    path = make_zero_page_pdf(tmp_path / "nothing.pdf")
    with pytest.raises(EmptyDocument, match="no pages"):
        count_pages(path, ".pdf")


def test_a_page_that_fails_to_render_names_its_page_number(tmp_path, monkeypatch):
    path = make_pdf(tmp_path / "a.pdf", ["fine", "broken", "fine"])
    real = pymupdf.Page.get_pixmap

    def failing(self, *args, **kwargs):
        if self.number == 1:
            raise RuntimeError("code=2: cannot parse content stream")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pymupdf.Page, "get_pixmap", failing)
    with pytest.raises(CorruptDocument, match="page 2 ") as info:
        all_pages(path, ".pdf")
    assert isinstance(info.value.__cause__, RuntimeError)  # the detail stays in the logs


def test_unknown_extensions_are_refused_when_opening(tmp_path):
    path = make_pdf(tmp_path / "a.pdf", ["x"])
    with pytest.raises(UnsupportedFormat, match="not supported"):
        count_pages(path, ".exe")


# --- images, XPS, EPUB ------------------------------------------------------------------------


def test_a_png_is_one_page_scaled_to_fit_and_centered(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (300, 200), (255, 0, 0)).save(path)
    assert count_pages(path, ".png") == 1
    (page,) = all_pages(path, ".png")
    left, top, right, bottom = ink_box(page.image)
    assert (left, right) == (0, 1024)
    assert abs((bottom - top) - 683) <= 1  # 1024 * 200 / 300
    assert abs(top - (1024 - bottom)) <= 1
    assert page.image.getpixel((512, 512)) == (255, 0, 0)
    assert page.text == ""


def test_a_transparent_png_renders_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (100, 100), (0, 0, 0, 0)).save(path)
    (page,) = all_pages(path, ".png")
    assert ink_box(page.image) is None


def test_a_jpeg_renders(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (200, 400), (0, 0, 255)).save(path, quality=95)
    (page,) = all_pages(path, ".jpg")
    red, green, blue = page.image.getpixel((512, 512))
    assert blue > 200 and red < 40 and green < 40
    left, top, right, bottom = ink_box(page.image)
    assert (top, bottom) == (0, 1024) and abs((right - left) - 512) <= 2


def test_a_two_frame_tiff_is_two_pages(tmp_path):
    path = tmp_path / "scan.tiff"
    frames = [Image.new("RGB", (400, 300), color) for color in ((255, 0, 0), (0, 128, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert count_pages(path, ".tiff") == 2
    first, second = all_pages(path, ".tif")
    assert first.image.getpixel((512, 512)) == (255, 0, 0)
    assert second.image.getpixel((512, 512)) == (0, 128, 0)
    assert first.content_hash != second.content_hash


def test_an_oversized_image_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (200, 200), "white").save(path)
    monkeypatch.setattr(ingest.render, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(DocumentTooLarge, match="200 x 200 pixels"):
        count_pages(path, ".png")


def test_a_damaged_image_is_corrupt(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\xff" * 40)
    with pytest.raises(CorruptDocument, match="image"):
        count_pages(path, ".png")


def test_an_xps_document_renders_each_page(tmp_path):
    path = make_xps(tmp_path / "form.xps", ["#FF0000", "#0000FF"])
    assert count_pages(path, ".xps") == 2
    first, second = all_pages(path, ".xps")
    assert first.image.getpixel((512, 512)) == (255, 0, 0)
    assert second.image.getpixel((512, 512)) == (0, 0, 255)


def test_an_epub_is_laid_out_onto_pages(tmp_path):
    long_chapter = "<h1>Chapter One</h1>" + "<p>Call me Ishmael. Some years ago.</p>" * 80
    path = make_epub(tmp_path / "book.epub", [long_chapter, "<h1>Chapter Two</h1><p>The end.</p>"])
    pages = all_pages(path, ".epub")
    assert len(pages) == count_pages(path, ".epub") >= 3
    assert "Chapter One" in pages[0].text
    assert "Chapter Two" in pages[-1].text
    assert "Chapter Two" not in pages[0].text


def test_a_broken_epub_is_corrupt(tmp_path):
    path = tmp_path / "book.epub"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(CorruptDocument):
        count_pages(path, ".epub")


def test_word_boxes_lie_on_the_ink_of_the_canonical_render():
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)  # A4: centred on the square with side margins
    page.insert_text((300, 400), "Xylem 742", fontsize=20)
    pdf = doc.tobytes()
    (rendered,) = ingest.render_pdf_bytes(pdf)
    (boxes,) = ingest.word_boxes(pdf)
    assert [w for *_, w in boxes] == ["Xylem", "742"]
    gray = rendered.image.convert("L")
    for x0, y0, x1, y1, _ in boxes:
        inside = gray.crop((int(x0), int(y0), int(x1) + 1, int(y1) + 1))
        assert inside.getextrema()[0] < 100  # ink in the box
    x0, y0, x1, y1, _ = boxes[0]
    beside = gray.crop((int(x0) - 40, int(y0), int(x0) - 2, int(y1)))
    assert beside.getextrema()[0] == 255  # and none just left of it
