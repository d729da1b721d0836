"""OCR engines on scanned renders of held-out pages: character precision and seconds per page.

    python -m lab.bench_ocr --pages 20 --out ocr.json                     # tesseract
    PYTHONPATH=DIR python -m lab.bench_ocr --engines tesseract,rapidocr   # DIR: pip install
        --target DIR rapidocr==3.10.0 (not a project dependency: measured, not shipped)

The pages: held-out text pages (``lab.textdata``, split "heldout": values never seen in
training) laid out on A4 by ingest's own layout (``ingest.layout_styled_html``, the synthetic
documents' fonts, ``lab.data.FONTS``: Helvetica, Times, Courier, DejaVu Sans / Serif /
Condensed / Mono, 9-12 pt), printed at ``--dpi`` (200, an office scanner's default) and
degraded like a scan: rotated by up to 1.5 degrees, a slight blur, sensor noise, a grey paper
tone, saved as JPEG (quality 70-85).
Each scan is then read the way an uploaded JPEG is: ``ingest.open_document`` + ``render_page``
with the engine as its OCR, so the canonical render, the OCR render (``engine.size``) and the
text clean-up are the service's own. The truth is the page's text layer before it was printed
(what the text tier holds for the born-digital file).

Reported per engine: character precision (lab.metrics.precision: 1 - edit distance / length,
whitespace collapsed), word recall, the share of the pages' fact answers found verbatim, and
seconds per page of the engine alone, wall-clock and CPU (median and mean; the engine loaded
once beforehand). Both engines run one thread: workers are one process per core.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image, ImageFilter

from ingest import layout_styled_html, open_document, render_page
from ingest.ocr import OCR_SIZE, PageReader, TesseractReader, clean_ocr_text
from ingest.render import text_layer
from lab import textdata
from lab.data import FONTS
from lab.metrics import collapse_whitespace, precision


class RapidOcrReader:
    """RapidOCR 3 (PP-OCRv6 detector and recogniser on onnxruntime), lines joined top to bottom."""

    def __init__(self, size: int = OCR_SIZE):
        from rapidocr import RapidOCR

        self.size = size
        threads = {"EngineConfig.onnxruntime.intra_op_num_threads": 1,
                   "EngineConfig.onnxruntime.inter_op_num_threads": 1}  # fmt: skip
        self._engine = RapidOCR(params=threads)

    def read(self, image: Image.Image) -> str:
        result = self._engine(np.asarray(image.convert("RGB")))
        if result.txts is None:
            return ""
        return clean_ocr_text("\n".join(result.txts))


class Timed:
    """Wraps a reader, keeping the wall-clock and CPU seconds of each ``read``. Both engines
    run in this process on one thread, so CPU seconds are what a page costs whatever else the
    machine is doing; wall seconds are what it took here, under the machine's load."""

    def __init__(self, reader: PageReader):
        self.reader, self.size = reader, reader.size
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def read(self, image: Image.Image) -> str:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return self.reader.read(image)
        finally:
            self.seconds.append(time.perf_counter() - start)
            self.cpu_seconds.append(time.process_time() - cpu)


def held_out_page(seed: int, dpi: int) -> tuple[Image.Image, str, list[str]]:
    """A held-out text page printed at ``dpi``: (print, its text layer, its fact answers)."""
    rng = random.Random(f"bench-ocr/{seed}")
    page = textdata.make_page(rng, "heldout")
    font = rng.choice(FONTS)
    pdf = layout_styled_html(
        ["".join(f"<p>{html.escape(line)}</p>" for line in page.text.splitlines())],
        font_family=font.family,
        font_size=rng.choice([9, 10, 11, 12]),
        font_files=dict(font.files) or None,
    )
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        first = doc.load_page(0)  # a long page spills over: its first A4 page is the test
        truth = text_layer(doc, first)
        pixmap = first.get_pixmap(dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
        printed = Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)
    answers = [f.answer for f in page.facts if collapse_whitespace(f.answer) in
               collapse_whitespace(truth)]  # fmt: skip
    return printed, truth, answers


def scan(image: Image.Image, seed: int) -> bytes:
    """What a scanner makes of a printed page: a slight rotation, blur, noise, grey paper, JPEG."""
    rng = random.Random(f"bench-ocr/scan/{seed}")
    angle = rng.uniform(-1.5, 1.5)
    image = image.rotate(angle, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.85, 0.95) + rng.uniform(5, 15)
    noise = np.random.default_rng(seed).normal(0.0, rng.uniform(4, 10), pixels.shape[:2])
    pixels = np.clip(pixels + noise[..., None], 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("L").save(buffer, "JPEG", quality=rng.randint(70, 85))
    return buffer.getvalue()


def words(text: str) -> Counter[str]:
    return Counter(collapse_whitespace(text).split())


def bench(engine: str, reader: PageReader, scans: list[tuple[bytes, str, list[str]]]) -> dict:
    timed = Timed(reader)
    precisions, recalls, found, answers = [], [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (jpeg, truth, facts) in enumerate(scans):
            path = Path(tmp) / f"scan{i}.jpg"
            path.write_bytes(jpeg)
            with open_document(path, ".jpg") as doc:
                page = render_page(doc, 1, timed)
            precisions.append(precision(page.text, truth))
            ref, hyp = words(truth), words(page.text)
            recalls.append(sum((ref & hyp).values()) / max(1, sum(ref.values())))
            got = collapse_whitespace(page.text)
            found += sum(collapse_whitespace(a) in got for a in facts)
            answers += len(facts)
            print(f"{engine} page {i + 1}/{len(scans)}: precision {precisions[-1]:.3f}, "
                  f"{timed.seconds[-1]:.2f} s", file=sys.stderr, flush=True)  # fmt: skip
    return {
        "engine": engine,
        "ocr_long_side_px": reader.size,
        "pages": len(scans),
        "char_precision": round(statistics.mean(precisions), 4),
        "char_precision_min": round(min(precisions), 4),
        "word_recall": round(statistics.mean(recalls), 4),
        "answers_found": f"{found}/{answers}",
        "seconds_per_page_median": round(statistics.median(timed.seconds), 2),
        "seconds_per_page_mean": round(statistics.mean(timed.seconds), 2),
        "cpu_seconds_per_page_median": round(statistics.median(timed.cpu_seconds), 2),
        "cpu_seconds_per_page_mean": round(statistics.mean(timed.cpu_seconds), 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--dpi", type=int, default=200)
    parser.add_argument("--engines", default="tesseract", help="tesseract,rapidocr")
    parser.add_argument("--sizes", default=str(OCR_SIZE), help="OCR render long sides, e.g. "
                        "1024,2048")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    scans = []
    for seed in range(args.pages):
        printed, truth, answers = held_out_page(seed, args.dpi)
        scans.append((scan(printed, seed), truth, answers))
    results = []
    for engine in args.engines.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            start = time.perf_counter()
            reader: PageReader = (TesseractReader(size=size) if engine == "tesseract"
                                  else RapidOcrReader(size=size))  # fmt: skip
            loaded = time.perf_counter() - start
            result = bench(engine, reader, scans)
            result["load_seconds"] = round(loaded, 2)
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    given = argv if argv is not None else sys.argv[1:]
    report = {
        "command": "python -m lab.bench_ocr " + " ".join(given),
        "dpi": args.dpi,
        "results": results,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
