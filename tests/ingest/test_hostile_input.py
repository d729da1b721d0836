"""Hostile and awkward files, generated here: each fails with an error that names its cap, in
bounded time and memory, or (text) arrives whole.

The caps run in a child process, so that its peak memory (ru_maxrss) and time are its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from ingest import (
    CorruptDocument,
    DocumentTooLarge,
    TooManyPages,
    count_pages,
    iter_page_chunks,
    open_document,
)
from ingest.archive import check_zip
from ingest.text_formats import decode_text, html_fragments
from kb.settings import Settings
from tests.ingest.samples import make_epub, make_xps

ROOT = Path(__file__).resolve().parents[2]
MAX_PAGES = Settings().max_pages_per_document  # the shipped default, as a worker gets it


def open_bounded(path: Path, ext: str, max_pages: int, timeout: float = 60) -> dict:
    """Open `path` as a worker does, in a child process: its error, seconds, peak RSS (MB)."""
    code = (
        "import json, sys; from pathlib import Path; import ingest\n"
        "try:\n"
        f"    with ingest.open_document(Path({str(path)!r}), {ext!r}, {max_pages}) as d:\n"
        "        out = {'pages': d.page_count}\n"
        "except ingest.IngestError as e:\n"
        "    out = {'error': type(e).__name__, 'message': str(e)}\n"
        # VmHWM: this process's peak RSS (ru_maxrss would count the parent's, from before exec)
        "status = Path('/proc/self/status').read_text()\n"
        "out['rss_mb'] = int(status.split('VmHWM:')[1].split()[0]) / 1024\n"
        "print(json.dumps(out))\n"
    )
    start = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=timeout, check=True
    )
    result = json.loads(child.stdout)
    result["seconds"] = time.monotonic() - start
    return result


# --- pages per document --------------------------------------------------------------------


def test_the_page_cap_is_one_setting_with_a_documented_default():
    assert MAX_PAGES == 2000
    assert Settings(max_pages_per_document=50).max_pages_per_document == 50


def test_a_pdf_with_more_pages_than_the_cap_fails_before_rendering(tmp_path):
    doc = pymupdf.open()
    for _ in range(MAX_PAGES + 500):
        doc.new_page(width=200, height=200)
    path = tmp_path / "many.pdf"
    doc.save(path)
    doc.close()
    result = open_bounded(path, ".pdf", MAX_PAGES, timeout=30)
    assert result["error"] == "TooManyPages", result
    assert f"more than {MAX_PAGES} pages" in result["message"]
    assert "max_pages_per_document" in result["message"]
    assert result["rss_mb"] < 400, result


def test_a_pdf_at_the_cap_opens(tmp_path):
    doc = pymupdf.open()
    for _ in range(3):
        doc.new_page()
    doc.save(tmp_path / "three.pdf")
    assert count_pages(tmp_path / "three.pdf", ".pdf", max_pages=3) == 3


def test_xps_tiff_epub_and_text_share_the_cap(tmp_path):
    xps = make_xps(tmp_path / "a.xps", ["red"] * 4)
    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "green", "blue", "white")]
    tiff = tmp_path / "a.tiff"
    frames[0].save(tiff, save_all=True, append_images=frames[1:])
    epub = make_epub(tmp_path / "a.epub", [f"<h1>Chapter {i}</h1><p>words</p>" for i in range(4)])
    txt = tmp_path / "a.txt"
    txt.write_text("a line of text\n" * 1000)  # ~20 pages
    for path in (xps, tiff, epub, txt):
        with pytest.raises(TooManyPages, match=r"more than 3 pages.*max_pages_per_document"):
            count_pages(path, path.suffix, max_pages=3)
    assert count_pages(tiff, ".tiff", max_pages=4) == 4


def test_a_text_layout_stops_at_the_cap_instead_of_laying_out_everything(tmp_path, monkeypatch):
    path = tmp_path / "long.txt"
    path.write_text("lorem ipsum dolor sit amet " * 400_000)  # ~10 MB: thousands of pages
    result = open_bounded(path, ".txt", max_pages=20, timeout=60)
    assert result["error"] == "TooManyPages", result
    # Count the pages MuPDF lays out (a spy on its Story, which still does the work): the cap
    # is met on the first fragment: 20 pages are placed and the 21st refused, not thousands.
    placed = 0
    place = pymupdf.Story.place

    def counting(self, *args, **kwargs):
        nonlocal placed
        placed += 1
        return place(self, *args, **kwargs)

    monkeypatch.setattr(pymupdf.Story, "place", counting)
    with pytest.raises(TooManyPages):
        count_pages(path, ".txt", max_pages=20)
    assert placed == 20


# --- zip containers ------------------------------------------------------------------------


def lie_about_size(path: Path, member: str, declared: int) -> None:
    """Rewrite a member's uncompressed size (local and central headers) to `declared`, with the
    CRC of its first `declared` bytes, so zipfile reads the short version without complaint."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        crc = zlib.crc32(archive.read(member)[:declared])
    data = bytearray(path.read_bytes())
    local = info.header_offset
    data[local + 14 : local + 18] = crc.to_bytes(4, "little")
    data[local + 22 : local + 26] = declared.to_bytes(4, "little")
    name = member.encode()
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(name)] != name:
        central = data.index(b"PK\x01\x02", central + 4)
    data[central + 16 : central + 20] = crc.to_bytes(4, "little")
    data[central + 24 : central + 28] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_a_docx_whose_headers_lie_about_its_size_fails_without_inflating_it(tmp_path):
    path = tmp_path / "liar.docx"
    body = "<w:document>" + " " * (300 * 2**20) + "</w:document>"  # 300 MB, ~300 KB zipped
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", body)
    del body
    lie_about_size(path, "word/document.xml", 1000)
    with zipfile.ZipFile(path) as archive:  # the lie holds: the declared total is tiny
        assert sum(i.file_size for i in archive.infolist()) < 2000
    result = open_bounded(path, ".docx", MAX_PAGES)
    assert result["error"] == "DocumentTooLarge", result
    assert "more than 200 MB" in result["message"], result
    assert result["rss_mb"] < 400, result  # measured in 1 MB steps, never inflated whole


def test_sizes_that_do_not_match_the_contents_are_damage(tmp_path):
    path = tmp_path / "liar.epub"
    make_epub(path, ["<p>" + "word " * 10_000 + "</p>"])
    lie_about_size(path, "OEBPS/c0.xhtml", 500)
    with pytest.raises(CorruptDocument, match="do not match its contents"):
        count_pages(path, ".epub")


def test_an_honest_zip_bomb_stops_at_the_limit_while_inflating(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a", b"\0" * (8 * 2**20))
        archive.writestr("b", b"\0" * (8 * 2**20))
    with pytest.raises(DocumentTooLarge, match="more than 10 MB"):
        check_zip(path, "the archive", limit=10 * 2**20)
    assert len(check_zip(path, "the archive", limit=16 * 2**20)) == 2


def test_an_epub_with_a_huge_chapter_fails_before_it_is_laid_out(tmp_path):
    chapter = "<p>" + "lorem ipsum dolor sit amet " * 40 + "</p>"
    path = make_epub(tmp_path / "bomb.epub", ["<p>hi</p>", chapter * 20_000])  # ~22 MB
    result = open_bounded(path, ".epub", MAX_PAGES, timeout=30)
    assert result["error"] == "DocumentTooLarge", result
    assert "limit is 16 MB per chapter" in result["message"]
    assert result["rss_mb"] < 400, result


def test_an_epub_over_the_page_cap_is_counted_chapter_by_chapter(tmp_path):
    chapter = "<p>" + "lorem ipsum dolor sit amet " * 40 + "</p>"
    path = make_epub(tmp_path / "long.epub", [chapter * 2_000] * 6)  # ~70 pages each
    with pytest.raises(TooManyPages, match="more than 100 pages"):
        count_pages(path, ".epub", max_pages=100)


# --- text arrives whole --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("日本語のテキストファイルです。東京の天気は晴れ、気温は二十度です。", "shift_jis"),
        ("这是一个中文文本文件。北京今天天气很好，气温二十度。", "gb18030"),
        ("Это русский текст в кодировке Windows. Москва, погода хорошая.", "cp1251"),
    ],
)
def test_legacy_encodings_are_detected(tmp_path, text, encoding):
    assert decode_text(text.encode(encoding)) == text
    path = tmp_path / "legacy.txt"
    path.write_bytes(((text + "\n") * 3).encode(encoding))
    page = next(iter_page_chunks(path, ".txt"))[0]
    assert text in page.text.replace("\n", "")


def test_a_wide_html_table_keeps_every_column_in_the_image_and_the_text(tmp_path):
    columns = 24
    head = "".join(f"<th>Head{i:02d}</th>" for i in range(columns))
    row = "".join(f"<td>cell{i:02d}value</td>" for i in range(columns))
    path = tmp_path / "wide.html"
    path.write_text(f"<html><body><p>Before</p><table><tr>{head}</tr><tr>{row}</tr></table>"
                    "<p>After</p></body></html>")  # fmt: skip
    with open_document(path, ".html") as doc:
        text = "".join(page.get_text() for page in doc)
        for page in doc:  # nothing drawn past the page's right edge
            for x0, _, x1, *_ in page.get_text("words", clip=pymupdf.INFINITE_RECT()):
                assert x1 <= page.rect.width, (x0, x1)
    for i in range(columns):
        assert f"Head{i:02d}" in text and f"cell{i:02d}value" in text
    rendered = "".join(p.text for chunk in iter_page_chunks(path, ".html") for p in chunk)
    assert all(f"cell{i:02d}value" in rendered for i in range(columns))
    assert "Before" in rendered and "After" in rendered


URL = (
    "https://example.com/reports/2024/quarterly-results/financial-statements/"
    "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0?session=0123456789abcdef&lang=en-GB#section-12"
)
HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
WORD = "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft"


@pytest.mark.parametrize("ext", [".txt", ".md", ".html"])
def test_urls_hashes_and_long_words_keep_their_characters_exactly(tmp_path, ext):
    line = f"See {URL} for details; checksum {HASH}; {WORD}."
    path = tmp_path / f"links{ext}"
    body = "\n\n".join([line] * 5)
    path.write_text(f"<p>{body}</p>" if ext == ".html" else body)
    text = "".join(p.text for chunk in iter_page_chunks(path, ext) for p in chunk)
    assert text.count(URL) == 5, text
    assert text.count(HASH) == 5 and text.count(WORD) == 5
    assert "\u200a" not in text and "\u200b" not in text


# --- hostile HTML --------------------------------------------------------------------------

# Each "SECRET" is markup a browser would not show (or would run): none may reach the text tier.
HOSTILE_HTML = """<!doctype html><html><head>
<title>SECRET-title</title><style>p::after { content: "SECRET-style" }</style>
<script>var leak = "SECRET-head-script";</script></head><body>
<p>Quarterly figures follow.</p>
<script><!--<script></script>SECRET-double-escaped-script</script>--></script>
<p hidden>SECRET-hidden-paragraph</p>
<ul><li style="display: none">SECRET-hidden-item</li><li>Visible item</li></ul>
<img src="x" onerror="alert('SECRET-onerror')" alt="Revenue chart">
<p><a href="javascript:alert('SECRET-javascript')" onclick="SECRET_onclick()">Read the report</a>
and <a href="jav&#x09;ascript:alert('SECRET-entity')">the annex</a>.</p>
<!-- SECRET-comment -->
<svg><script>SECRET-svg-script</script><style>SECRET-svg-style</style></svg>
<p style="position: absolute; top: -9999px; background: url(javascript:SECRET_css)">Moved</p>
<p>End of page.</p>
</body></html>
"""
VISIBLE = ["Quarterly figures follow.", "Visible item", "[Revenue chart]", "Read the report",
           "the annex", "Moved", "End of page."]  # fmt: skip


@pytest.mark.parametrize("ext", [".html", ".md"])  # CommonMark passes inline HTML through
def test_hostile_html_reaches_the_text_tier_as_its_visible_text_only(tmp_path, ext):
    path = tmp_path / f"hostile{ext}"
    path.write_text(HOSTILE_HTML)
    pages = [page for chunk in iter_page_chunks(path, ext) for page in chunk]
    text = " ".join(" ".join(page.text.split()) for page in pages)
    for visible in VISIBLE:
        assert visible in text, (visible, text)
    assert "SECRET" not in text, text
    assert text.index("Quarterly") < text.index("Revenue chart") < text.index("End of page")


@pytest.mark.parametrize("ext", [".html", ".md"])
def test_hostile_html_is_laid_out_without_handlers_urls_scripts_or_comments(tmp_path, ext):
    path = tmp_path / f"hostile{ext}"
    path.write_text(HOSTILE_HTML)
    laid_out = "".join(html_fragments(path, ext))  # exactly what ingest.layout is given
    unwanted_markup = [
        "SECRET", "onerror", "onclick", "javascript", "src=", "href=", "url(",
        "<script", "<style", "<svg", "<!--", "<img", "position", "hidden",
    ]  # fmt: skip
    for unwanted in unwanted_markup:
        assert unwanted not in laid_out, (unwanted, laid_out)
    assert "<ul><li>Visible item</li></ul>" in laid_out  # the structure the layout needs


def test_a_big_html_page_is_sanitized_in_bounded_memory(tmp_path):
    """nh3 parses a page whole (html5ever's tree): measured ~15 MB of peak memory per MB."""
    block = (
        '<div class="s"><h2>Section {i}</h2><p>Lorem ipsum dolor sit amet, <a href="/x">consectetur'
        "</a> adipiscing elit.</p><ul><li>one</li><li><i>two</i></li></ul><script>var a={i};"
        "</script></div>\n"
    )
    path = tmp_path / "big.html"
    path.write_text("<html><body>" + "".join(block.format(i=i) for i in range(60_000)) + "</body>")
    assert 10e6 < path.stat().st_size < 12e6
    result = open_bounded(path, ".html", max_pages=20, timeout=60)
    assert result["error"] == "TooManyPages", result
    assert result["rss_mb"] < 500, result  # measured 308 (159 before nh3: a streaming parser)
