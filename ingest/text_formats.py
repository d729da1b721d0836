"""Text formats (.txt, .md, .html/.htm, .docx) -> sanitized HTML fragments, ready to lay out.

Every text format goes through one path: the format becomes HTML; HTML that comes from the
user (an HTML page, Markdown's inline HTML) is sanitized by nh3 (`sanitize_html`), which keeps
only the elements and styles we can lay out safely (no scripts, no external resources, no styles
that hide text or push it off the page); `HtmlSplitter` drops hidden elements and cuts the stream
into fragments of about FRAGMENT_CHARS. `ingest.layout` lays each fragment out as one pymupdf
Story. Plain text and Word documents are written as HTML by the converters here, from escaped
text.

Why fragments: a Story's layout time and memory grow with its size (a 2 MB <pre> takes seconds
and tens of MB; markdown-it on 15 MB of Markdown takes half a minute and over 1 GB), so a big
file is processed a slice at a time. Each fragment starts on a new page: continuing a Story in
the leftover part of a page loses lines in pymupdf 2.0 (measured), so we never do that. A file
under FRAGMENT_CHARS (nearly all of them) is one fragment and gets no extra page break.
"""

from __future__ import annotations

import codecs
import functools
import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from ingest.archive import check_zip
from ingest.errors import CorruptDocument, DocumentTooLarge, EmptyDocument, UnsupportedFormat

MAX_TEXT_BYTES = 50 * 1024 * 1024  # a .txt/.md/.html over this is refused: it would lay out to
# ~10,000+ pages and the decoded text, HTML and PDF all sit in a worker's memory at once
FRAGMENT_CHARS = 400_000  # HTML per Story: ~100-150 pages, laid out in well under a second
_MARKDOWN_SECTION_CHARS = 256_000  # markdown-it-py memory is ~80x its input; parse in sections
_READ_CHUNK_CHARS = 1_000_000  # how much decoded text is handed to the HTML parser at a time
_TOKEN_CHARS = 20  # a token (no whitespace) longer than this gets places to break (mark_breaks)
_WORD_CHARS = 30  # proportional characters that fit a line even in wide glyphs and big headings

# Control characters other than tab, newline and carriage return (form feeds become newlines):
# they have no glyph and some confuse the layout engine.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Bytes of a text file -> str, whatever its encoding, never failing.

    A BOM decides when there is one; then the encoding the file declares (an HTML <meta
    charset>), if Python knows it and the bytes fit; then UTF-8. Anything else is a legacy
    encoding (Shift-JIS, GB18030, cp1251, cp1252, ...), detected by charset-normalizer from the
    bytes. Short Western texts fit many single-byte code pages equally well; among the best
    guesses, cp1252 (what "ANSI" files from Windows are) wins when it reads the same or as well.
    latin-1, which accepts any byte, is the last resort: a wrong guess shows odd characters, not
    a crash.
    """
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        text = data.decode("utf-32", errors="replace")
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        candidates: tuple[str, ...] = ("utf-8-sig",)
        if declared and _known_codec(declared):
            candidates = (declared, *candidates)
        for encoding in candidates:
            try:
                text = data.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        else:
            text = _detect_legacy(data)
    return _CONTROL_CHARS.sub("", text.replace("\f", "\n"))


def _detect_legacy(data: bytes) -> str:
    from charset_normalizer import from_bytes

    try:
        western: str | None = data.decode("cp1252")
    except UnicodeDecodeError:
        western = None
    matches = list(from_bytes(data))
    if not matches:
        return western if western is not None else data.decode("latin-1")
    best = [m for m in matches if m.chaos <= matches[0].chaos]
    if western is not None and any(m.encoding == "cp1252" or str(m) == western for m in best):
        return western
    return str(matches[0])


def read_text_file(path: Path, html_page: bool = False) -> str:
    """Read and decode a text file, refusing files over MAX_TEXT_BYTES."""
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise DocumentTooLarge(
            f"the file is {size / 2**20:.0f} MB of text; the limit is "
            f"{MAX_TEXT_BYTES // 2**20} MB. Split it into smaller files"
        )
    data = path.read_bytes()
    declared = None
    if html_page:
        match = _META_CHARSET.search(data[:4096])
        declared = match.group(1).decode("ascii") if match else None
    return decode_text(data, declared)


_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def _known_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def html_fragments(path: Path, ext: str) -> Iterator[str]:
    """The document at `path` (a text format, by normalized extension) as HTML fragments.

    Raises EmptyDocument, once the whole file has been seen, if it has no visible text.
    """
    if ext == ".txt":
        pieces, what = _txt_html(read_text_file(path)), "the text file"
    elif ext == ".md":
        pieces, what = _markdown_html(read_text_file(path)), "the Markdown file"
    elif ext in (".html", ".htm"):
        text = sanitize_html(read_text_file(path, html_page=True))
        pieces, what = _chunks(text, _READ_CHUNK_CHARS), "the HTML page"
    elif ext == ".docx":
        pieces, what = _docx_html(path), "the Word document"
    else:
        raise ValueError(f"{ext} is not a text format")
    splitter = HtmlSplitter(FRAGMENT_CHARS)
    for piece in pieces:
        yield from splitter.feed_html(piece)
    yield from splitter.finish()
    if not splitter.has_text:
        raise EmptyDocument(f"{what} contains no text (only whitespace or markup)")


def _chunks(text: str, size: int) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


# --- .txt -------------------------------------------------------------------------------------


def _txt_html(text: str) -> Iterator[str]:
    """Plain text keeps its lines and spacing: one <pre> that wraps long lines."""
    # The newline after <pre> is eaten by the HTML parser, so a leading blank line survives.
    yield "<pre>\n"
    for piece in _chunks(text, _READ_CHUNK_CHARS):
        yield html.escape(piece, quote=False)
    yield "</pre>"


# --- .md --------------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _markdown_html(text: str) -> Iterator[str]:
    """CommonMark (plus tables and strikethrough) -> HTML, in sections for big files.

    A section boundary is a blank line outside a fenced code block, so every block is parsed
    whole; only reference-style links whose definition sits in another section lose their link.
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    for section in _markdown_sections(text, _MARKDOWN_SECTION_CHARS):
        yield sanitize_html(md.render(section))  # CommonMark passes inline HTML through


def _markdown_sections(text: str, target: int) -> Iterator[str]:
    if len(text) <= target:
        yield text
        return
    section: list[str] = []
    size = 0
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        section.append(line)
        size += len(line)
        match = _FENCE.match(line)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
        if size >= target and fence is None and not line.strip():
            yield "".join(section)
            section, size = [], 0
    if section:
        yield "".join(section)


# --- .docx ------------------------------------------------------------------------------------


def _docx_html(path: Path) -> Iterator[str]:
    """Word paragraphs, headings, lists and tables -> HTML, in document order.

    Images, headers, footers, footnotes and comments are left out: they need Word's own layout
    engine; upload a PDF export to keep them.
    """
    import docx

    _check_docx_container(path)
    try:
        document = docx.Document(str(path))
    except Exception as exc:  # python-docx, zipfile and lxml each raise their own types
        raise CorruptDocument(
            "the Word document could not be read; it may be damaged. Open it in Word and save it "
            "again, or upload a PDF export"
        ) from exc
    yield from _DocxConverter(document).blocks(document.iter_inner_content())


def _check_docx_container(path: Path) -> None:
    infos = check_zip(path, "the Word document")
    if "word/document.xml" not in {info.filename for info in infos}:
        raise UnsupportedFormat(
            "the file is named .docx but is not a Word document (the zip archive has no "
            "word/document.xml); upload it with its real extension"
        )


class _DocxConverter:
    """Walks python-docx's object model and writes HTML; one per document (caches numbering)."""

    def __init__(self, document: Any) -> None:
        try:
            self._numbering = document.part.numbering_part.element
        except (KeyError, NotImplementedError, AttributeError):
            self._numbering = None  # a document without lists has no numbering part
        self._list_kinds: dict[tuple[str, str], str | None] = {}

    def blocks(self, items: Iterable[Any]) -> Iterator[str]:
        from docx.table import Table
        from docx.text.paragraph import Paragraph

        open_lists: list[str] = []  # "ul" / "ol" per nesting level, each with an <li> open
        for item in items:
            if isinstance(item, Paragraph):
                inline = self._inline(item)
                listing = self._list_info(item)
                if listing is not None:
                    kind, level = listing
                    yield from _close_lists(open_lists, level + 1)
                    if len(open_lists) == level + 1 and open_lists[-1] != kind:
                        yield from _close_lists(open_lists, level)
                    if len(open_lists) == level + 1:
                        yield "</li>"
                    while len(open_lists) < level + 1:
                        yield f"<{kind}>"
                        open_lists.append(kind)
                    yield f"<li>{inline}"
                    continue
                yield from _close_lists(open_lists, 0)
                if inline.strip():  # empty paragraphs are Word's vertical spacing
                    tag = self._heading_tag(item) or "p"
                    yield f"<{tag}{self._align(item)}>{inline}</{tag}>"
            elif isinstance(item, Table):
                yield from _close_lists(open_lists, 0)
                yield self._table(item)
        yield from _close_lists(open_lists, 0)

    def _inline(self, paragraph: Any) -> str:
        from docx.text.hyperlink import Hyperlink
        from docx.text.run import Run

        parts: list[str] = []
        for item in paragraph.iter_inner_content():
            if isinstance(item, Run):
                parts.append(_run_html(item))
            elif isinstance(item, Hyperlink):
                parts.extend(_run_html(run) for run in item.runs)
        return "".join(parts)

    def _heading_tag(self, paragraph: Any) -> str | None:
        style = getattr(paragraph, "style", None)
        name = (style.name or "").lower() if style is not None else ""
        if name == "title":
            return "h1"
        if name == "subtitle":
            return "h2"
        match = re.fullmatch(r"heading (\d)", name)
        level: int | None = int(match.group(1)) if match else None
        if level is None:  # localized style names ("Überschrift 1"): use the outline level
            element = paragraph._p
            values = element.xpath("./w:pPr/w:outlineLvl/@w:val")
            if not values and style is not None:
                values = style.element.xpath("./w:pPr/w:outlineLvl/@w:val")
            if values and values[0].isdigit() and int(values[0]) < 9:
                level = int(values[0]) + 1
        return f"h{min(level, 6)}" if level else None

    @staticmethod
    def _align(paragraph: Any) -> str:
        alignment = getattr(paragraph, "alignment", None)
        if alignment is None:
            return ""
        css = {1: "center", 2: "right", 3: "justify"}.get(int(alignment))
        return f' style="text-align: {css}"' if css else ""

    def _list_info(self, paragraph: Any) -> tuple[str, int] | None:
        """("ul" | "ol", nesting level) for a list paragraph, None for any other paragraph."""
        element = paragraph._p
        num_ids = element.xpath("./w:pPr/w:numPr/w:numId/@w:val")
        levels = element.xpath("./w:pPr/w:numPr/w:ilvl/@w:val")
        style = getattr(paragraph, "style", None)
        style_name = (style.name or "") if style is not None else ""
        if not num_ids and style is not None:  # "List Bullet" styles carry numbering themselves
            num_ids = style.element.xpath("./w:pPr/w:numPr/w:numId/@w:val")
            levels = levels or style.element.xpath("./w:pPr/w:numPr/w:ilvl/@w:val")
        if not num_ids or num_ids[0] == "0":  # numId 0 means "numbering removed"
            if not style_name.lower().startswith("list"):
                return None
        level = int(levels[0]) if levels and levels[0].isdigit() else 0
        suffix = re.search(r"(\d)$", style_name)
        if not levels and suffix:  # "List Bullet 2" is the second level
            level = int(suffix.group(1)) - 1
        kind = self._list_kind(num_ids[0] if num_ids else "", str(level), style_name)
        if kind is None:
            return None
        return kind, min(level, 8)

    def _list_kind(self, num_id: str, level: str, style_name: str) -> str | None:
        key = (num_id, level)
        if key not in self._list_kinds:
            fmt = ""
            if self._numbering is not None and num_id:
                try:
                    num = self._numbering.num_having_numId(int(num_id))
                    abstract_id = num.abstractNumId.val
                    found = self._numbering.xpath(
                        f'./w:abstractNum[@w:abstractNumId="{abstract_id}"]'
                        f'/w:lvl[@w:ilvl="{level}"]/w:numFmt/@w:val'
                    )
                    fmt = found[0] if found else ""
                except (KeyError, ValueError, AttributeError):
                    fmt = ""
            kind: str | None
            if fmt == "none":
                kind = None
            elif fmt == "bullet":
                kind = "ul"
            elif fmt:
                kind = "ol"
            else:
                kind = "ol" if "number" in style_name.lower() else "ul"
            self._list_kinds[key] = kind
        return self._list_kinds[key]

    def _table(self, table: Any) -> str:
        from docx.table import _Cell

        rows: list[str] = []
        for tr in table._tbl.tr_lst:
            cells: list[str] = []
            for tc in tr.tc_lst:
                span = f' colspan="{tc.grid_span}"' if tc.grid_span > 1 else ""
                if tc.vMerge == "continue":  # the merged cell's text is in the row above
                    content = ""
                else:
                    content = "".join(self.blocks(_Cell(tc, table).iter_inner_content()))
                cells.append(f"<td{span}>{content}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return "<table>" + "".join(rows) + "</table>"


def _close_lists(open_lists: list[str], keep: int) -> Iterator[str]:
    while len(open_lists) > keep:
        yield f"</li></{open_lists.pop()}>"


def _run_html(run: Any) -> str:
    text = html.escape(run.text, quote=False)
    if not text:
        return ""
    text = text.replace("\t", " ").replace("\n", "<br>")
    font = run.font
    wrappers = [
        ("b", run.bold),
        ("i", run.italic),
        ("u", run.underline),
        ("s", font.strike),
        ("sup", font.superscript),
        ("sub", font.subscript),
    ]
    for tag, on in wrappers:
        if on:
            text = f"<{tag}>{text}</{tag}>"
    return text


# --- sanitizing HTML (nh3) --------------------------------------------------------------------

# Dropped with everything inside them: not content, or content we cannot render (and would
# otherwise fetch: iframes, objects, SVG <image href>).
_DROP_WITH_CONTENT = frozenset(
    {
        "script", "style", "head", "title", "template", "iframe", "object", "embed", "svg",
        "canvas", "audio", "video", "noembed", "noframes", "select", "datalist", "map",
    }
)  # fmt: skip
# Kept as elements. Anything else (html, body, font, form controls, custom elements) is
# unwrapped: its text stays, the tag goes. <img> is kept only for its alt text, which the
# splitter writes in its place.
_KEEP = frozenset(
    {
        "p", "div", "span", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li",
        "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption",
        "pre", "code", "kbd", "samp", "tt", "var", "blockquote", "q", "cite", "em", "strong",
        "b", "i", "u", "s", "strike", "del", "ins", "sub", "sup", "small", "big", "mark",
        "abbr", "a", "section", "article", "header", "footer", "main", "nav", "aside",
        "figure", "figcaption", "address", "center", "details", "summary", "img",
    }
)  # fmt: skip
# No attribute that names a URL (href, src, srcset, ...) or runs code (on*) is kept, so nothing
# laid out can load or run anything. `hidden` and the display/visibility styles are kept for the
# splitter, which drops the elements they hide and never writes them out.
_ATTRIBUTES = {
    "*": {"colspan", "rowspan", "start", "reversed", "type", "align", "valign", "style", "hidden"},
    "img": {"alt"},
}
# Style properties that change emphasis but can neither hide text, move it off the page, nor
# load anything.
_STYLE_PROPERTIES = frozenset(
    {"text-align", "font-weight", "font-style", "text-decoration", "vertical-align",
     "list-style-type"}
)  # fmt: skip
_VISIBILITY_PROPERTIES = frozenset({"display", "visibility"})
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


@functools.cache
def _cleaner() -> Any:
    import nh3

    return nh3.Cleaner(
        tags=set(_KEEP),
        clean_content_tags=set(_DROP_WITH_CONTENT),
        attributes=_ATTRIBUTES,
        strip_comments=True,
        link_rel=None,  # no href survives, so there is no link to mark
        url_schemes=set(),  # and should one ever be allowed, no scheme is
        filter_style_properties=set(_STYLE_PROPERTIES | _VISIBILITY_PROPERTIES),
    )


def sanitize_html(markup: str) -> str:
    """Untrusted HTML (a page, Markdown's inline HTML, a converted Word file) -> safe HTML.

    nh3 (ammonia on html5ever, the HTML standard's parser, as a browser parses) keeps only the
    elements in _KEEP with the attributes in _ATTRIBUTES, drops scripts, styles and the rest of
    _DROP_WITH_CONTENT with their content, comments, event handlers and every URL, and writes
    the result back well-formed: every element closed, properly nested. It parses the whole text
    at once: peak memory about 10 to 20 times the input (measured: 40 MB of HTML, 0.4 to 0.8 GB,
    2 s).
    """
    result: str = _cleaner().clean(markup)
    return result


# --- splitting HTML ---------------------------------------------------------------------------

_VOID = frozenset({"br", "hr", "img"})  # the void elements among _KEEP
_BLOCK = frozenset(
    {
        "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd",
        "table", "thead", "tbody", "tfoot", "tr", "pre", "blockquote", "section", "article",
        "header", "footer", "main", "nav", "aside", "figure", "address", "center", "details",
        "hr",
    }
)  # fmt: skip
# Never cut a fragment while one of these is open: a cut would renumber a list item, split a
# table cell or a heading across pages.
_NO_CUT_INSIDE = frozenset(
    {"li", "td", "th", "dt", "dd", "caption", "p", "h1", "h2", "h3", "h4", "h5", "h6"}
)


@dataclass
class _Open:
    tag: str
    start_tag: str  # as emitted, to re-open the element in the next fragment
    items: int = 0  # <li> children seen so far, for an <ol> re-opened with the right start


class HtmlSplitter(HTMLParser):
    """Cut well-formed, sanitized HTML into self-contained fragments of about `target` chars.

    Its input is `sanitize_html`'s output, or HTML our converters write from escaped text: only
    elements of _KEEP, every one closed. It drops what is hidden (`hidden`, `display: none`,
    `visibility: hidden`) and writes an image's alt text in its place. Feed it HTML in any pieces
    (a tag may straddle two pieces); each call returns the fragments completed so far. A fragment
    ends after a block element, with the elements still open closed; the next fragment opens them
    again, so every fragment is well-formed on its own.
    """

    def __init__(self, target: int) -> None:
        super().__init__(convert_charrefs=True)
        self.target = target
        self.has_text = False  # any visible character kept, over the whole stream
        self._fragment_has_text = False  # the same, in the fragment being built
        self._out: list[str] = []
        self._size = 0
        self._stack: list[_Open] = []
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._done: list[str] = []

    # public interface

    def feed_html(self, data: str) -> list[str]:
        self.feed(data)
        return self._take()

    def finish(self) -> list[str]:
        self.close()
        self._cut(final=True)
        return self._take()

    # HTMLParser callbacks

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        attributes = dict(attrs)
        hidden = "hidden" in attributes or _HIDDEN_STYLE.search(attributes.get("style") or "")
        if hidden:  # sanitized HTML closes every element: the skip ends at its end tag
            if tag not in _VOID:
                self._skip_tag, self._skip_depth = tag, 1
            return
        if tag not in _KEEP:  # not in sanitized HTML; unwrapped, should any come
            return
        if tag == "img":
            alt = (attributes.get("alt") or "").strip()
            if alt:
                self._text(f"[{alt}]")
            return
        start_tag = f"<{tag}{_attributes_html(attributes)}>"
        self._emit(start_tag)
        if tag in _VOID:
            if tag == "hr":
                self._maybe_cut()
            return
        if tag == "li":
            for parent in reversed(self._stack):
                if parent.tag in ("ol", "ul"):
                    parent.items += 1
                    break
        self._stack.append(_Open(tag, start_tag))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:  # <div/> in XHTML: an empty element
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag not in _KEEP or tag in _VOID:
            return
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i].tag == tag:
                for open_ in reversed(self._stack[i:]):
                    self._emit(f"</{open_.tag}>")
                del self._stack[i:]
                if tag in _BLOCK:
                    self._maybe_cut()
                return
        # an end tag with no matching start tag: dropped, as browsers do

    def handle_data(self, data: str) -> None:
        if self._skip_tag is not None or not data:
            return
        self._text(data)

    # internals

    def _text(self, data: str) -> None:
        in_pre = any(open_.tag == "pre" for open_ in self._stack)
        # In <pre> a cut at a line break is invisible; elsewhere cut only runaway text (one
        # paragraph of megabytes) at a space.
        separator, limit = ("\n", self.target) if in_pre else (" ", 4 * self.target)
        while self._size + len(data) > limit and separator in data:
            room = max(limit - self._size, 0)
            cut = data.rfind(separator, 0, room + 1)
            if cut <= 0:
                cut = data.find(separator, 1)
                if cut == -1:
                    break
            self._emit_text(data[:cut])
            self._cut()
            data = data[cut + 1 :]
        self._emit_text(data)

    def _emit_text(self, data: str) -> None:
        if data and not data.isspace():
            self.has_text = self._fragment_has_text = True
        self._emit(html.escape(mark_breaks(data), quote=False))

    def _emit(self, chunk: str) -> None:
        self._out.append(chunk)
        self._size += len(chunk)

    def _maybe_cut(self) -> None:
        if self._size >= self.target and not any(o.tag in _NO_CUT_INSIDE for o in self._stack):
            self._cut()

    def _cut(self, final: bool = False) -> None:
        closing = "".join(f"</{o.tag}>" for o in reversed(self._stack))
        if self._fragment_has_text:  # a fragment with no text would only add a blank page
            self._done.append("".join(self._out) + closing)
        self._out, self._size, self._fragment_has_text = [], 0, False
        if final:
            self._stack = []
            return
        for open_ in self._stack:
            self._emit(_reopen(open_))

    def _take(self) -> list[str]:
        done, self._done = self._done, []
        return done


BREAK_MARK = "\u200a"  # HAIR SPACE: MuPDF may break a line at it, and reads it back as itself
# CJK scripts break between any two characters already (and MuPDF reads a mark between them
# back as a space), so their characters never count towards a long token.
_NOT_CJK = r"[^\s\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
_LONG_TOKEN = re.compile(rf"{_NOT_CJK}{{{_TOKEN_CHARS + 1},}}")
_BREAK_AFTER = re.compile(rf"([^\w\s])(?=\S)|(\w{{{_WORD_CHARS}}})(?=\w)")


def mark_breaks(data: str) -> str:
    """Give tokens too long for a line places to break, or MuPDF cuts them off at the margin.

    URLs, hashes and base64 have no spaces. A token over _TOKEN_CHARS gets a BREAK_MARK after
    each punctuation character (where MuPDF breaks anyway, e.g. after "/" or "-") and every
    _WORD_CHARS letters. The mark is for display only: `unmark_breaks` takes it out of the text
    layer again, with the line break it made, so the text keeps the exact characters. A hair space
    in the source would be taken for a mark, so it becomes an ordinary space first.
    """
    data = data.replace(BREAK_MARK, " ")
    return _LONG_TOKEN.sub(lambda m: _BREAK_AFTER.sub(rf"\1\2{BREAK_MARK}", m.group()), data)


def unmark_breaks(text: str) -> str:
    """The text layer of a page laid out from `mark_breaks` output, with the marks undone."""
    return (
        text.replace(BREAK_MARK + "\n", "").replace("\n" + BREAK_MARK, "").replace(BREAK_MARK, "")
    )


def _reopen(open_: _Open) -> str:
    if open_.tag == "ol" and open_.items:
        start = re.search(r'start="(-?\d+)"', open_.start_tag)
        first = (int(start.group(1)) if start else 1) + open_.items
        tag = re.sub(r' start="-?\d+"', "", open_.start_tag)
        return tag[:-1] + f' start="{first}">'
    if open_.tag == "pre":  # the parser eats one newline after <pre>; keep a leading blank line
        return open_.start_tag + "\n"
    return open_.start_tag


def _attributes_html(attributes: dict[str, str | None]) -> str:
    """The attributes sanitize_html kept, less those only the splitter reads."""
    kept: list[str] = []
    for name, value in attributes.items():
        if name == "hidden":
            continue
        if name == "style":
            value = _layout_style(value or "")
            if not value:
                continue
        kept.append(f' {name}="{html.escape(value or "", quote=True)}"')
    return "".join(kept)


def _layout_style(style: str) -> str:
    """A style nh3 filtered, without display and visibility (read for hiding, never laid out)."""
    kept: list[str] = []
    for declaration in style.split(";"):
        name, colon, value = declaration.partition(":")
        name, value = name.strip().lower(), value.strip()
        if colon and name not in _VISIBILITY_PROPERTIES:
            kept.append(f"{name}: {value}")
    return "; ".join(kept)
