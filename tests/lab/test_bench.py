"""The service benchmark runs on the real components and writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

from lab import bench


def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    report = bench.main(["--quick", "--out", str(out)])

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report))
    for key in ("model", "machine", "command", "date", "loadavg", "sizes", "elapsed_s"):
        assert key in written
    assert written["command"] == f"python -m lab.bench --quick --out {out}"
    assert len(written["loadavg"]["start"]) == 3

    packer = written["packer"]
    assert packer["pages"] == 10_000 and packer["median_s"] > 0
    assert sum(packer["tiers"].values()) + packer["left_out"] == 10_000

    cache = written["tensor_cache"]
    assert cache["cold_s"] > 0 and cache["warm_s"] >= 0 and cache["bytes"] > 0
    # Cold reads every page from the store once; warm finds every page in RAM.
    assert (cache["misses"], cache["hits"]) == (cache["pages"], cache["pages"])

    (ask,) = written["ask"]
    assert ask["n"] == 10 and ask["pages"] == 10
    assert ask["cold_s"] > 0 and ask["warm_s"] > 0
    # Ten pages of text fit the default budget: all at the exact text tier, which costs what
    # their text costs (one token per 4 bytes), not a fixed count.
    assert ask["tiers"] == {"text": 10} and ask["tokens"] > 10 * 64
    # The pages are real: one states the fact asked about, and the answer is copied from it.
    assert ask["answer_right"], ask

    render = written["render"]
    assert render["pages"] == written["sizes"]["render_pages"]
    assert render["raster_pages_per_s"] > 0 and render["render_step_pages_per_s"] > 0
