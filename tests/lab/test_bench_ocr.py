"""lab.bench_ocr on one scanned page: it reads the page and reports what docs/benchmarks.md
quotes."""

from __future__ import annotations

from pathlib import Path

from lab import bench_ocr


def test_one_scanned_page(tmp_path: Path) -> None:
    out = tmp_path / "ocr.json"
    report = bench_ocr.main(["--pages", "1", "--sizes", "2048", "--out", str(out)])
    [result] = report["results"]
    assert result["engine"] == "tesseract" and result["pages"] == 1
    assert result["char_precision"] > 0.95, result
    assert result["seconds_per_page_median"] > 0
    assert "load average" in report["uptime"] and out.exists()
