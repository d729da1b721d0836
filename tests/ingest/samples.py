"""Real sample documents, generated on the fly: no fixtures checked in, no network."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import pymupdf
from PIL import Image, ImageFilter

A4 = (595, 842)


def make_pdf(path: Path, texts: Sequence[str], size: tuple[float, float] = A4, **save) -> Path:
    """One page per text, the text written near the top-left in Helvetica."""
    doc = pymupdf.open()
    for text in texts:
        page = doc.new_page(width=size[0], height=size[1])
        page.insert_text((72, 72), text, fontsize=14)
    doc.save(path, **save)
    doc.close()
    return path


def make_epub(path: Path, chapters: Sequence[str]) -> Path:
    """A minimal EPUB 3: the mimetype entry first and stored, a container, an OPF, XHTML."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")
        archive.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" '
            'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
            '<rootfile full-path="OEBPS/content.opf" '
            'media-type="application/oebps-package+xml"/></rootfiles></container>',
        )
        items = "".join(
            f'<item id="c{i}" href="c{i}.xhtml" media-type="application/xhtml+xml"/>'
            for i in range(len(chapters))
        )
        spine = "".join(f'<itemref idref="c{i}"/>' for i in range(len(chapters)))
        archive.writestr(
            "OEBPS/content.opf",
            '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0" '
            'unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
            '<dc:identifier id="id">sample</dc:identifier><dc:title>Sample</dc:title>'
            f"<dc:language>en</dc:language></metadata><manifest>{items}</manifest>"
            f"<spine>{spine}</spine></package>",
        )
        for i, body in enumerate(chapters):
            archive.writestr(
                f"OEBPS/c{i}.xhtml",
                '<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml">'
                f"<head><title>c{i}</title></head><body>{body}</body></html>",
            )
    return path


_XPS = "http://schemas.microsoft.com/xps/2005/06"


def make_xps(path: Path, page_colors: Sequence[str]) -> Path:
    """A minimal XPS: one page per color, each page filled with that color (text needs fonts)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types '
            'xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="fdseq" '
            'ContentType="application/vnd.ms-package.xps-fixeddocumentsequence+xml"/>'
            '<Default Extension="fdoc" '
            'ContentType="application/vnd.ms-package.xps-fixeddocument+xml"/>'
            '<Default Extension="fpage" '
            'ContentType="application/vnd.ms-package.xps-fixedpage+xml"/></Types>',
        )
        archive.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships '
            'xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="r1" '
            'Type="http://schemas.microsoft.com/xps/2005/06/fixedrepresentation" '
            'Target="/FixedDocumentSequence.fdseq"/></Relationships>',
        )
        archive.writestr(
            "FixedDocumentSequence.fdseq",
            f'<FixedDocumentSequence xmlns="{_XPS}">'
            '<DocumentReference Source="/Documents/1/FixedDocument.fdoc"/>'
            "</FixedDocumentSequence>",
        )
        refs = "".join(
            f'<PageContent Source="Pages/{i + 1}.fpage"/>' for i in range(len(page_colors))
        )
        archive.writestr(
            "Documents/1/FixedDocument.fdoc",
            f'<FixedDocument xmlns="{_XPS}">{refs}</FixedDocument>',
        )
        for i, color in enumerate(page_colors):
            archive.writestr(
                f"Documents/1/Pages/{i + 1}.fpage",
                f'<FixedPage Width="816" Height="1056" xmlns="{_XPS}" xml:lang="en">'
                f'<Path Data="M 0,0 L 816,0 L 816,1056 L 0,1056 Z" Fill="{color}"/></FixedPage>',
            )
    return path


def make_zero_page_pdf(path: Path) -> Path:
    """A well-formed PDF (valid xref, nothing to repair) whose page tree is empty."""
    objects = [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[]/Count 0>>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def make_scan(path: Path, lines: Sequence[str], dpi: int = 150, angle: float = 0.8) -> Path:
    """A scanned page without a text layer: the lines printed on A4 in 12 pt Helvetica, rendered
    at ``dpi``, turned by ``angle`` degrees and slightly blurred, saved as PNG, JPEG or TIFF (by
    the suffix)."""
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    for i, line in enumerate(lines):
        page.insert_text((72, 96 + 24 * i), line, fontsize=12)
    pixmap = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY, alpha=False)
    doc.close()
    image = Image.frombytes("L", (pixmap.width, pixmap.height), pixmap.samples)
    image = image.rotate(angle, Image.Resampling.BICUBIC, fillcolor=255)
    image.filter(ImageFilter.GaussianBlur(0.6)).save(path)
    return path
