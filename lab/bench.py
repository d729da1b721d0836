"""The service-level speed benchmark: ``python -m lab.bench`` (``make bench``).

No model quality here (that is ``lab.eval``): the real components, in-process, on a
temporary data directory (a ``Context``: SQLite catalog, local object store, tensor cache, the
configured model backend), timed where a user waits:

    packer         pack 10,000 pages into the context budget
    tensor cache   load N page tensors from the store, cold (empty RAM cache) then warm
    ask            kb.reader.ask over N = 10, 100, 1,000 ready pages, cold cache then warm
    render         the ingest render step (pipeline.render_document) on a 50-page PDF

The ask benchmark's pages are real: 16 held-out pages of lab.data (fillers and one needle, whose
question is the one asked), rendered and encoded at the tier the packer gives each page, as
ingest would, and repeated; a question reads an optical page's read-back, so its cost depends on
what the pages hold. The tensor cache's are random fp16 of the backend's real shapes (what is
stored and loaded does not depend on the values). Catalog rows and tensors are inserted directly,
as the encode step would leave them. "Cold" means not in the process's RAM cache: the files were
just written, so the operating system's file cache still holds them (dropping it needs root and
would disturb other processes); a cold load from disk or S3 is slower than reported here.

Prints a table and writes JSON (default ``data/bench/bench.json``; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import html
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

import ingest
from ingest.layout import layout_html
from ingest.tiers import TEXT
from kb import pipeline, reader
from kb.catalog import repo
from kb.catalog.models import DocumentStatus
from kb.context import Context
from kb.model.base import Backend, PageTensors
from kb.packer import Candidate, pack
from kb.settings import Settings
from kb.tensors import TensorCache
from lab import data

PAGES_PER_DOCUMENT = 50
BENCH_PAGES = 16  # distinct real pages of the ask benchmark, repeated to N


@dataclass(frozen=True)
class Sizes:
    packer_pages: int
    packer_repeats: int
    cache_pages: int  # page tensors loaded cold then warm
    cache_tier: str
    ask_ns: tuple[int, ...]
    ask_repeats: int  # per N and cache state; the median is reported
    render_pages: int


FULL = Sizes(
    packer_pages=10_000,
    packer_repeats=5,
    cache_pages=1000,
    cache_tier="tiny",
    ask_ns=(10, 100, 1000),
    ask_repeats=3,
    render_pages=50,
)
QUICK = Sizes(
    packer_pages=10_000,
    packer_repeats=1,
    cache_pages=20,
    cache_tier="tiny",
    ask_ns=(10,),
    ask_repeats=1,
    render_pages=4,
)

Log = Callable[[str], None]


def page_hash(label: str) -> str:
    return hashlib.sha256(f"kb-bench/{label}".encode()).hexdigest()


def random_tensors(backend: Backend, tier: str, seed: int) -> PageTensors:
    """Tensors of the shapes the backend caches for one page at ``tier``, random fp16 values.

    Shapes come from a real encoding of a blank page, so they follow the backend's config."""
    shapes = _shapes(backend, tier)
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(shape, generator=generator).to(torch.float16)
        for name, shape in shapes.items()
    }


_SHAPES: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}


def _shapes(backend: Backend, tier: str) -> dict[str, tuple[int, ...]]:
    key = (backend.version, tier)
    if key not in _SHAPES:
        from PIL import Image

        size = ingest.tier_image(Image.new("RGB", (1024, 1024), "white"), tier).size
        encoded = backend.encode([Image.new("RGB", size, "white")], tier)[0]
        _SHAPES[key] = {name: tuple(t.shape) for name, t in encoded.items()}
    return _SHAPES[key]


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 5)


# ---------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------


def bench_packer(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    rng = random.Random(0)
    candidates = [Candidate(key=i, recency=rng.random()) for i in range(sizes.packer_pages)]
    times = []
    packing = None
    for _ in range(sizes.packer_repeats):
        t0 = time.perf_counter()
        packing = pack(candidates, backend.tier_tokens, backend.context_budget)
        times.append(time.perf_counter() - t0)
    assert packing is not None
    return {
        "pages": sizes.packer_pages,
        "budget": backend.context_budget,
        "median_s": _median(times),
        "runs_s": [round(t, 5) for t in times],
        "tiers": packing.tiers,
        "left_out": len(packing.left_out),
    }


def bench_tensor_cache(ctx: Context, sizes: Sizes, log: Log) -> dict[str, Any]:
    backend = ctx.backend
    tier, n = sizes.cache_tier, sizes.cache_pages
    hashes = [page_hash(f"cache-{i}") for i in range(n)]
    for i, h in enumerate(hashes):
        ctx.tensors.put(backend.version, tier, h, random_tensors(backend, tier, i))
    cache = TensorCache(ctx.store, max_bytes=ctx.settings.tensor_cache_mb << 20)
    t0 = time.perf_counter()
    loaded = [cache.get(backend.version, tier, h) for h in hashes]
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for h in hashes:
        cache.get(backend.version, tier, h)
    warm = time.perf_counter() - t0
    nbytes = sum(t.numel() * t.element_size() for page in loaded for t in page.values())
    result = {
        "pages": n,
        "tier": tier,
        "bytes": nbytes,
        "cold_s": round(cold, 5),
        "warm_s": round(warm, 5),
        "speedup": round(cold / warm, 1) if warm > 0 else None,
        "cold_mb_per_s": round(nbytes / cold / 1e6, 1),
        "hits": cache.hits,
        "misses": cache.misses,
        "note": "cold: a fresh TensorCache reading every page from the local store (files just "
        "written, so from the OS file cache); warm: the same pages again, from RAM",
    }
    log(f"tensor cache: {n} {tier} pages cold {cold:.3f} s, warm {warm:.4f} s")
    return result


@functools.cache
def bench_pages() -> tuple[tuple[Image.Image, str], ...]:
    """BENCH_PAGES held-out pages (canonical render, text): a needle page first, then fillers."""
    needle, _ = data.needle_page(0, "heldout")
    pages = [needle] + [data.filler_page(seed, "heldout") for seed in range(BENCH_PAGES - 1)]
    return tuple((p.image, p.text) for p in pages)


def question() -> tuple[str, str]:
    """The ask benchmark's question and its answer: the needle page's fact."""
    _, fact = data.needle_page(0, "heldout")
    return fact.question, fact.answer


_ENCODED: dict[tuple[str, str], list[PageTensors]] = {}


def page_tensors(backend: Backend, tier: str, page: int) -> PageTensors:
    """Bench page ``page``'s tensors at ``tier``, encoded as ingest does (each page and tier
    once per process: its read-back included, where the backend reads pages back)."""
    key = (backend.version, tier)
    if key not in _ENCODED:
        pages = bench_pages()
        if tier == TEXT:
            _ENCODED[key] = backend.encode_text([text for _, text in pages])
        else:
            images = [ingest.tier_image(image, tier) for image, _ in pages]
            _ENCODED[key] = backend.encode(images, tier)
    return _ENCODED[key][page]


def fill_collection(ctx: Context, collection: str, n_pages: int) -> dict[str, int]:
    """A collection of ``n_pages`` ready pages, as the encode step leaves them: catalog rows
    marked encoded under the backend's version, and tensors for the tier each page will be
    packed at (every tier of every page would be ~2 MB a page, 2 GB at N = 1,000)."""
    backend = ctx.backend
    version = backend.version
    page_ids: list[int] = []
    which: dict[str, int] = {}  # content hash -> its bench page
    texts = [text for _, text in bench_pages()]
    with ctx.session() as s:
        for first in range(0, n_pages, PAGES_PER_DOCUMENT):
            count = min(PAGES_PER_DOCUMENT, n_pages - first)
            doc = repo.create_document(
                s,
                collection=collection,
                filename=f"bench-{first // PAGES_PER_DOCUMENT + 1}.pdf",
                content_type="application/pdf",
                size_bytes=0,
                sha256=page_hash(f"{collection}-doc-{first}"),
                original_key=f"originals/bench/{collection}-{first}.pdf",
            )
            for number in range(1, count + 1):
                h = page_hash(f"{collection}-{first + number}")
                which[h] = (first + number - 1) % len(texts)
                page = repo.upsert_page(
                    s,
                    document_id=doc.id,
                    number=number,
                    content_hash=h,
                    text=texts[which[h]],
                    image_key=pipeline.page_image_key(h),
                )
                page_ids.append(page.id)
            repo.set_pages_total(s, doc.id, count)
            repo.set_status(s, doc.id, DocumentStatus.READY)
        repo.mark_pages_encoded(s, page_ids, version)
    # Which tier each page gets: the packer on the same pages, in the order reader.ask gives it
    # (newer documents first, then page number). A mismatch would fail loudly at ask time.
    with ctx.session() as s:
        pages = repo.ready_pages(s, collection)
        candidates = [
            Candidate(
                p.content_hash,
                p.document.created_at.timestamp() + p.number * 1e-6,
                text_tokens=backend.text_tokens(p.text),
            )
            for p in pages
        ]
    packing = pack(candidates, backend.tier_tokens, backend.context_budget)
    for key, tier in packing.chosen:
        ctx.tensors.put(version, tier, str(key), page_tensors(backend, tier, which[str(key)]))
    return packing.tiers


def bench_ask(ctx: Context, sizes: Sizes, log: Log) -> list[dict[str, Any]]:
    results = []
    for n in sizes.ask_ns:
        collection = f"bench-{n}"
        t0 = time.perf_counter()
        tiers = fill_collection(ctx, collection, n)
        log(f"ask: {n} ready pages inserted in {time.perf_counter() - t0:.1f} s ({tiers})")
        # Untimed: one-time costs (first decoder call, query compilation) are not the cache's.
        asked, expected = question()
        answer = reader.ask(ctx, asked, collection)
        cold, warm = [], []
        for _ in range(sizes.ask_repeats):
            ctx.tensors = TensorCache(ctx.store, max_bytes=ctx.settings.tensor_cache_mb << 20)
            t0 = time.perf_counter()
            answer = reader.ask(ctx, asked, collection)
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            answer = reader.ask(ctx, asked, collection)
            warm.append(time.perf_counter() - t0)
        results.append(
            {
                "n": n,
                "pages": answer.pages,
                "tokens": answer.tokens,
                "tiers": answer.tiers,
                "cold_s": _median(cold),
                "warm_s": _median(warm),
                "cold_runs_s": [round(t, 4) for t in cold],
                "warm_runs_s": [round(t, 4) for t in warm],
                "question": asked,
                "answer": answer.answer,
                "answer_right": " ".join(answer.answer.split()).lower()
                == " ".join(expected.split()).lower(),
            }
        )
        log(f"ask: N={n} cold {_median(cold):.3f} s, warm {_median(warm):.3f} s")
    return results


def make_bench_pdf(path: Path, n_pages: int) -> Path:
    """A text PDF of exactly ``n_pages`` A4 pages, laid out by ingest's own HTML layout."""
    rng = random.Random(0)
    words = (
        "the quarterly report shows revenue growth in every region while costs stayed within "
        "the approved budget and the team delivered the new warehouse layout ahead of schedule "
        "staff feedback on the travel policy was positive and the audit found no major issues"
    ).split()

    def paragraph() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(40, 80))).capitalize() + "."

    fragments = []
    for i in range(n_pages):
        body = "".join(f"<p>{html.escape(paragraph())}</p>" for _ in range(5))
        fragments.append(f"<h2>Section {i + 1}</h2>{body}")
    path.write_bytes(layout_html(fragments))
    return path


def bench_render(ctx: Context, sizes: Sizes, workdir: Path, log: Log) -> dict[str, Any]:
    pdf = make_bench_pdf(workdir / "bench.pdf", sizes.render_pages)
    pages = ingest.count_pages(pdf, ".pdf")
    # The rasteriser alone: canonical render + text layer + page hash.
    t0 = time.perf_counter()
    rendered = sum(len(chunk) for chunk in ingest.iter_page_chunks(pdf, ".pdf"))
    raster = time.perf_counter() - t0
    # The whole render step of an upload: original from the store, render, PNG into the store,
    # page rows into the catalog.
    key = pipeline.original_key("bench-render", pdf.name)
    ctx.store.put_file(key, pdf)
    with ctx.session() as s:
        doc_id = repo.create_document(
            s,
            collection="bench-render",
            filename=pdf.name,
            content_type="application/pdf",
            size_bytes=pdf.stat().st_size,
            sha256=page_hash("render"),
            original_key=key,
        ).id
    t0 = time.perf_counter()
    result = pipeline.render_document(ctx, doc_id)
    step = time.perf_counter() - t0
    stored = sum(len(c) for c in result.chunks)
    log(f"render: {pages} pages, {rendered / raster:.1f} pages/s raster, {stored / step:.1f} step")
    return {
        "pages": pages,
        "raster_s": round(raster, 3),
        "raster_pages_per_s": round(rendered / raster, 2),
        "render_step_s": round(step, 3),
        "render_step_pages_per_s": round(stored / step, 2),
        "note": "raster: ingest.iter_page_chunks (1024 px render, text layer, hash); render "
        "step: pipeline.render_document (store read, render, PNG write, catalog rows)",
    }


# ---------------------------------------------------------------------------------------------
# Running, printing, writing
# ---------------------------------------------------------------------------------------------


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run(ctx: Context, sizes: Sizes, workdir: Path, log: Log) -> dict[str, Any]:
    backend = ctx.backend  # loaded (and warmed) before anything is timed
    started = time.perf_counter()
    load = {"start": loadavg()}
    results: dict[str, Any] = {"packer": bench_packer(backend, sizes)}
    log(f"packer: {sizes.packer_pages} pages in {results['packer']['median_s']:.4f} s")
    results["tensor_cache"] = bench_tensor_cache(ctx, sizes, log)
    results["ask"] = bench_ask(ctx, sizes, log)
    results["render"] = bench_render(ctx, sizes, workdir, log)
    results["ask_note"] = (
        "kb.reader.ask end to end (catalog query, packer, tensor loads, backend.answer); cold: "
        "a fresh TensorCache before the question, warm: the same question again; median of "
        f"{sizes.ask_repeats} after one untimed question"
    )
    load["end"] = loadavg()
    results["loadavg"] = load
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def print_report(report: dict[str, Any], console: Console) -> None:
    model = report["model"]
    console.print(
        f"[bold]lab.bench[/bold]  model {model['version']} (trained: {model['trained']})  "
        f"{report['machine']['cpu_count']} cores, {report['machine']['torch_threads']} torch "
        f"threads  load avg {report['loadavg']['start']} -> {report['loadavg']['end']}"
    )
    table = Table(title="Service speed on this machine (cold = not in the RAM cache)")
    table.add_column("benchmark")
    table.add_column("figure", justify="right")
    table.add_column("detail")
    p = report["packer"]
    table.add_row(
        f"packer, {p['pages']:,} pages", f"{1000 * p['median_s']:.1f} ms", f"tiers {p['tiers']}"
    )
    c = report["tensor_cache"]
    table.add_row(
        f"tensor cache, {c['pages']} {c['tier']} pages",
        f"{c['cold_s']:.3f} s cold / {c['warm_s']:.4f} s warm",
        f"speedup {c['speedup']}x, {c['cold_mb_per_s']} MB/s cold",
    )
    for a in report["ask"]:
        table.add_row(
            f"ask, {a['n']} pages",
            f"{a['cold_s']:.3f} s cold / {a['warm_s']:.3f} s warm",
            f"{a['tokens']} tokens {a['tiers']}, answer {a['answer']!r} "
            f"({'right' if a['answer_right'] else 'wrong'})",
        )
    r = report["render"]
    table.add_row(
        f"render, {r['pages']}-page PDF",
        f"{r['raster_pages_per_s']:.1f} pages/s",
        f"render step with store + catalog: {r['render_step_pages_per_s']:.1f} pages/s",
    )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m lab.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, help="JSON path (default data/bench/bench.json)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a 2-core CPU shared with other work, two threads "
        "waiting on each other made questions several times slower; see docs/benchmarks.md)",
    )
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _main(args, argv)
    finally:
        torch.set_num_threads(before)


def _main(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL

    console = Console(stderr=True)
    started = time.monotonic()

    def log(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:7.1f}s[/dim] {message}", highlight=False)

    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")  # the start
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        workdir = Path(tmp)
        # A fresh embedded stack: whatever KB_DATABASE_URL / KB_S3_* say, the bench never
        # touches real data.
        overrides: dict[str, Any] = {"data_dir": workdir / "data", "database_url": None}
        settings = Settings(**overrides, s3_endpoint=None)
        ctx = Context(settings)
        try:
            log(f"model {ctx.backend.version}, trained: {ctx.backend.trained}")
            results = run(ctx, sizes, workdir, log)
            model = {
                "name": ctx.backend.name,
                "version": ctx.backend.version,
                "trained": ctx.backend.trained,
                "context_budget": ctx.backend.context_budget,
                "tier_tokens": ctx.backend.tier_tokens,
            }
        finally:
            ctx.close()
    report = {
        "model": model,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": " ".join(["python -m lab.bench", *argv]),
        "date": date,
        "quick": args.quick,
        "threads": args.threads,
        "sizes": asdict(sizes),
        **results,
    }
    out = args.out or Path("data/bench") / ("bench-quick.json" if args.quick else "bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, Console())
    log(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
