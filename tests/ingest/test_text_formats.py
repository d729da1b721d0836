"""Text formats laid out into pages: .txt, .md, .html, .docx."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import docx
import pytest

import ingest.layout
import ingest.render
import ingest.text_formats
from ingest import (
    CorruptDocument,
    DocumentTooLarge,
    EmptyDocument,
    RenderedPage,
    UnsupportedFormat,
    count_pages,
    iter_page_chunks,
    open_document,
    page_chunks,
)
from ingest.text_formats import HtmlSplitter, decode_text, sanitize_html
from ingest.tiers import CANONICAL


def all_pages(path: Path, ext: str) -> list[RenderedPage]:
    return [page for chunk in iter_page_chunks(path, ext) for page in chunk]


def numbered_lines(pages: list[RenderedPage]) -> list[int]:
    """The numbers of all lines tagged "L000123#", in reading order across pages."""
    return [int(n) for page in pages for n in re.findall(r"L(\d{6})#", page.text)]


# --- .txt -------------------------------------------------------------------------------------


def test_a_long_txt_becomes_several_a4_pages_with_every_line_on_one_page(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(
        "".join(f"L{i:06d}# the quick brown fox jumps over the dog\n" for i in range(250))
    )
    pages = all_pages(path, ".txt")
    assert len(pages) == count_pages(path, ".txt") >= 3
    assert numbered_lines(pages) == list(range(250))  # nothing lost, nothing repeated
    assert "L000000#" in pages[0].text and "L000249#" in pages[-1].text
    for page in pages:
        assert page.image.size == (CANONICAL.size, CANONICAL.size)
    # A4 is taller than wide: the page fills the height, with white bands left and right.
    assert pages[0].image.getpixel((5, 512)) == (255, 255, 255)


@pytest.mark.parametrize("line_chars", [20, 84, 150])
def test_no_line_is_lost_when_a_big_text_is_laid_out_in_fragments(
    tmp_path, monkeypatch, line_chars
):
    """Big files are laid out a fragment at a time; the seams must not drop or repeat lines.

    pymupdf 2.0 loses lines when a Story continues on a partly filled page, with some sizes;
    this pins down that the layout we use does not.
    """
    monkeypatch.setattr(ingest.text_formats, "FRAGMENT_CHARS", 6_000)
    filler = "lorem ipsum dolor sit amet " * 8
    path = tmp_path / "big.txt"
    path.write_text("\n".join(f"L{i:06d}# {filler}"[:line_chars] for i in range(900)))
    assert numbered_lines(all_pages(path, ".txt")) == list(range(900))


def test_identical_text_files_give_identical_page_hashes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("same words on the same page\n" * 100)
    copy = shutil.copy(path, tmp_path / "b.txt")
    assert [p.content_hash for p in all_pages(path, ".txt")] == [
        p.content_hash for p in all_pages(Path(copy), ".txt")
    ]


def test_a_word_longer_than_a_line_wraps_instead_of_being_cut_off(tmp_path):
    path = tmp_path / "hash.txt"
    path.write_text("start " + "x" * 3000 + " end")
    text = "".join(p.text for p in all_pages(path, ".txt"))
    assert text.count("x") == 3000
    assert "end" in text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("Café naïve – “quotes”".encode("cp1252"), "Café naïve – “quotes”"),
        ("Grüße".encode("latin-1"), "Grüße"),
        ("Grüße aus Köln".encode("utf-16"), "Grüße aus Köln"),
        ("\ufeffBOM then text".encode(), "BOM then text"),
        (b"ctrl\x01\x02chars\x7f gone", "ctrlchars gone"),
    ],
)
def test_text_in_odd_encodings_is_decoded(data, expected):
    assert decode_text(data) == expected


def test_a_cp1252_text_file_renders_its_accents(tmp_path):
    path = tmp_path / "legacy.txt"
    path.write_bytes("Café déjà vu".encode("cp1252"))
    assert "Café déjà vu" in all_pages(path, ".txt")[0].text


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("blank.txt", "   \n\n\t \r\n", "text file"),
        ("blank.md", "\n\n   \n", "Markdown"),
        (
            "blank.html",
            "<html><head><title>t</title><script>x()</script></head><body> </body>",
            "HTML",
        ),
    ],
)
def test_whitespace_only_text_documents_are_empty(tmp_path, name, content, what):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(EmptyDocument, match=f"{what}.* no text"):
        count_pages(path, path.suffix)


def test_text_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest.text_formats, "MAX_TEXT_BYTES", 1_000)
    path = tmp_path / "huge.txt"
    path.write_text("word " * 1_000)
    with pytest.raises(DocumentTooLarge, match="limit"):
        count_pages(path, ".txt")


def test_a_text_document_is_laid_out_once_for_count_and_render(tmp_path, monkeypatch):
    calls = []
    real = ingest.render.layout_html
    monkeypatch.setattr(
        ingest.render, "layout_html", lambda f, cap: calls.append(cap) or real(f, cap)
    )
    path = tmp_path / "once.txt"
    path.write_text("a line\n" * 200)
    with open_document(path, ".txt", max_pages=50) as doc:  # as kb.pipeline renders
        total = doc.page_count
        rendered = [p.number for chunk in page_chunks(doc, chunk_size=2) for p in chunk]
    assert rendered == list(range(1, total + 1)) and total >= 3
    assert calls == [50]


# --- .md --------------------------------------------------------------------------------------

MARKDOWN = """# Project Handbook

Some *emphasis* and **strong** words.

- first point
- second point
  - nested point

1. step one
2. step two

| Name | Value |
|------|-------|
| alpha | 42 |

```python
print("fenced code")
```

<script>document.write("injected")</script>

![diagram](http://example.com/diagram.png)
"""


def test_markdown_is_rendered_with_its_structure(tmp_path):
    path = tmp_path / "handbook.md"
    path.write_text(MARKDOWN)
    (page,) = all_pages(path, ".md")
    text = page.text
    for expected in [
        "Project Handbook",
        "emphasis",
        "first point",
        "nested point",
        "step two",
        "alpha",
        "42",
        'print("fenced code")',
        "[diagram]",
    ]:
        assert expected in text
    assert "injected" not in text and "document.write" not in text
    assert "# Project" not in text  # a heading, not literal markup
    assert text.index("Project Handbook") < text.index("first point") < text.index("alpha")


def test_a_big_markdown_file_is_parsed_in_sections_without_breaking_code_fences(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(ingest.text_formats, "_MARKDOWN_SECTION_CHARS", 300)
    paragraphs = "\n\n".join(f"Paragraph L{i:06d}# with some words." for i in range(60))
    fence = "```\n# not a heading\n\n\n# still code\n```\n"
    path = tmp_path / "big.md"
    path.write_text(paragraphs + "\n\n" + fence + "\n" + paragraphs.replace("L0", "L1"))
    pages = all_pages(path, ".md")
    text = "".join(p.text for p in pages)
    assert "# not a heading" in text and "# still code" in text
    assert numbered_lines(pages) == list(range(60)) + list(range(100_000, 100_060))


# --- .html ------------------------------------------------------------------------------------

HTML = """<!doctype html>
<html><head><title>Page title</title>
<style>body { color: red } @import url(http://example.com/x.css);</style>
<link rel="stylesheet" href="http://example.com/site.css">
<script>alert("script text")</script></head>
<body>
<h1>Visible heading</h1>
<p style="font-size: 900pt; text-align: center; background: url(http://example.com/bg.png)">
Centered paragraph with <b>bold</b> text.</p>
<img src="http://example.com/logo.png" alt="Company logo">
<img src="file:///etc/hostname">
<iframe src="http://example.com/embed">iframe text</iframe>
<div hidden>hidden menu</div>
<div style="display:none">invisible banner</div>
<ul><li>one<li>two</ul>
<table><tr><th>Key<th>Value<tr><td>colour<td>blue</table>
<noscript>shown without scripts</noscript>
</body></html>
"""


def test_html_keeps_its_content_and_drops_scripts_styles_and_hidden_parts(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(HTML)
    (page,) = all_pages(path, ".html")
    text = page.text
    for expected in [
        "Visible heading",
        "Centered paragraph with bold text",
        "[Company logo]",
        "one",
        "two",
        "Key",
        "colour",
        "blue",
        "shown without scripts",
    ]:
        assert expected in text
    for unwanted in [
        "Page title",
        "script text",
        "color: red",
        "iframe text",
        "hidden menu",
        "invisible banner",
    ]:
        assert unwanted not in text


def test_html_is_decoded_with_the_charset_it_declares(tmp_path):
    path = tmp_path / "legacy.html"
    page = '<html><head><meta charset="windows-1251"></head><body><p>Привет, мир</p></body>'
    path.write_bytes(page.encode("cp1251"))
    assert "Привет, мир" in all_pages(path, ".html")[0].text


def test_sanitized_html_refers_to_no_external_resource():
    splitter = HtmlSplitter(target=1_000_000)
    html = "".join(splitter.feed_html(sanitize_html(HTML)) + splitter.finish())
    for reference in [
        "src=",
        "href=",
        "url(",
        "@import",
        "<script",
        "<style",
        "<link",
        "<iframe",
        "<img",
        "font-size",
    ]:
        assert reference not in html
    assert 'style="text-align: center"' in html  # harmless styles survive


def test_html_is_split_into_well_formed_fragments_that_continue_lists():
    items = "".join(f"<li><p>item {i}</p></li>" for i in range(1, 301))
    splitter = HtmlSplitter(target=2_000)
    fragments = splitter.feed_html(f'<div><ol start="5">{items}</ol></div>') + splitter.finish()
    assert len(fragments) > 3
    for fragment in fragments:
        assert fragment.count("<ol") == fragment.count("</ol>") == 1
        assert fragment.count("<div>") == fragment.count("</div>") == 1
        assert fragment.count("<li>") == fragment.count("</li>")  # never cut inside an item
    first_item = int(re.search(r"item (\d+)", fragments[1]).group(1))
    assert f'<ol start="{first_item + 4}">' in fragments[1]  # numbering carries on


def test_a_table_row_taller_than_a_page_is_not_cut_off(tmp_path):
    """MuPDF cannot split a table row over pages; such a table is laid out as plain blocks."""
    lines = "<br>".join(f"L{i:06d}# row line" for i in range(300))
    path = tmp_path / "form.html"
    path.write_text(f"<table><tr><td>{lines}</td><td>side</td></tr></table><p>after the table</p>")
    pages = all_pages(path, ".html")
    assert numbered_lines(pages) == list(range(300))
    assert "after the table" in pages[-1].text


def test_a_long_html_table_flows_over_pages(tmp_path):
    rows = "".join(f"<tr><td>L{i:06d}#</td><td>value {i}</td></tr>" for i in range(200))
    path = tmp_path / "table.html"
    path.write_text(f"<table>{rows}</table>")
    pages = all_pages(path, ".html")
    assert len(pages) >= 2
    assert numbered_lines(pages) == list(range(200))


# --- .docx ------------------------------------------------------------------------------------


def make_docx(path: Path) -> Path:
    document = docx.Document()
    document.add_heading("Quarterly Report", level=0)
    document.add_heading("Revenue", level=1)
    paragraph = document.add_paragraph("Revenue grew by ")
    paragraph.add_run("twelve percent").bold = True
    paragraph.add_run(" this quarter.")
    document.add_paragraph("first bullet", style="List Bullet")
    document.add_paragraph("nested bullet", style="List Bullet 2")
    document.add_paragraph("step one", style="List Number")
    document.add_paragraph("step two", style="List Number")
    table = document.add_table(rows=2, cols=2)
    for row, cells in enumerate([("Region", "Sales"), ("North", "1,200")]):
        for col, value in enumerate(cells):
            table.cell(row, col).text = value
    document.add_page_break()
    document.add_paragraph("Closing remarks.")
    document.save(path)
    return path


def test_docx_paragraphs_headings_lists_and_tables_are_rendered_in_order(tmp_path):
    path = make_docx(tmp_path / "report.docx")
    pages = all_pages(path, ".docx")
    text = "".join(p.text for p in pages)
    order = [
        "Quarterly Report", "Revenue", "twelve percent", "first bullet", "nested bullet",
        "1. step one", "2. step two", "Region", "North", "1,200", "Closing remarks.",
    ]  # fmt: skip
    positions = [text.index(item) for item in order]  # raises if anything is missing
    assert positions == sorted(positions)


def test_docx_lists_and_headings_become_html_structure(tmp_path):
    path = make_docx(tmp_path / "report.docx")
    html = "".join(ingest.text_formats._docx_html(path))
    assert "<h1>Quarterly Report</h1>" in html
    assert "<b>twelve percent</b>" in html
    assert "<ul><li>first bullet<ul><li>nested bullet</li></ul></li></ul>" in html
    assert "<ol><li>step one</li><li>step two</li></ol>" in html
    assert "<table><tr><td><p>Region</p></td>" in html


def test_ligatures_read_back_as_plain_letters(tmp_path):
    path = make_docx(tmp_path / "report.docx")
    text = all_pages(path, ".docx")[0].text
    assert "first bullet" in text and "\ufb01" not in text  # not the "fi" ligature glyph


def test_a_zip_that_is_not_a_word_document_is_unsupported(tmp_path):
    path = tmp_path / "fake.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not word")
    with pytest.raises(UnsupportedFormat, match="not a Word document"):
        count_pages(path, ".docx")


def test_a_damaged_docx_is_corrupt(tmp_path):
    path = tmp_path / "broken.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("word/document.xml", "<w:document><unclosed")
    with pytest.raises(CorruptDocument, match="Word document"):
        count_pages(path, ".docx")


def test_a_truncated_docx_is_corrupt(tmp_path):
    data = make_docx(tmp_path / "report.docx").read_bytes()
    path = tmp_path / "truncated.docx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDocument, match="damaged"):
        count_pages(path, ".docx")


def test_a_docx_with_no_text_is_empty(tmp_path):
    path = tmp_path / "blank.docx"
    document = docx.Document()
    document.add_paragraph("")
    document.save(path)
    with pytest.raises(EmptyDocument, match="Word document contains no text"):
        count_pages(path, ".docx")


def test_the_layout_uses_a4_pages(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x")
    with open_document(path, ".txt") as doc:
        assert doc[0].rect == ingest.layout.PAGE
