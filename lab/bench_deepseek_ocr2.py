"""Benchmark of the deepseek-ocr2 backend: the full-size DeepSeek-OCR 2 on random weights.

Speed does not depend on the weights, so this needs a GPU but no checkpoint. Everything goes
through the backend's own code (the paths the service takes):

- encoding, pages per second: the base tier's global view (1024 px, 257 tokens), the small tier's
  (768 px, 145 tokens), and dense base pages with their crops (global + 4 x 768 px crops), at the
  pipeline's batch size (8) and a larger one;
- asking, against the number of packed pages (1, 8, 32, ... up to what the context holds, the
  packer choosing tiers): prefill (the packed pages and the question) and decoding (per token)
  separately, for a first question (the pages' kv cache computed) and a second one (reused).

Random weights rarely emit the end token, so decoding runs the full ``--new-tokens``; the
numbers are per token anyway.

    python -m lab.bench_deepseek_ocr2 --out bench.json     # a GPU machine: full size
    python -m lab.bench_deepseek_ocr2 --tiny               # the tiny config on a CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image, ImageDraw

import ingest
from kb.model.base import ContextPage
from kb.model.deepseek_ocr2.backend import DeepseekOcr2Backend
from kb.model.deepseek_ocr2.random_init import (
    full_config,
    local_processor,
    random_model,
    tiny_config,
)
from kb.packer import Candidate, pack

# defaults: a GPU run / a --tiny CPU run
ENCODE_PAGES = 256, 4  # pages encoded per measurement
BATCHES = "8,32", "2"  # pages per encoder call (the pipeline's ENCODE_BATCH is 8)
ASK_PAGES = "1,8,32,max", "1,max"  # packed pages per question ("max": what the context holds)
NEW_TOKENS = 64, 2  # tokens decoded per question
REPEATS = 3, 1  # measurements per point; the median is reported
DISTINCT_PAGES = 16, 2  # distinct renders, cycled (encoding never deduplicates within a call)

LINE = "Quarterly revenue rose 4.2% as the Lisbon office added 37 engineers and 5 designers. "


def page_render(i: int, dense: bool, size: int = 1024) -> Image.Image:
    """A synthetic page: a few lines of text, or (dense) the whole page of small print."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.text((40, 30), f"Page {i + 1}", fill="black")
    for n, y in enumerate(range(60, size - 20, 11 if dense else 40)):
        if not dense and n >= 6:
            break
        draw.text((40, y), (LINE * 3)[(i + n) % 40 :][:180], fill="black")
    if dense:
        draw.rectangle((size // 2, size // 2, size - 60, size - 60), fill="black")  # a figure
    return image


def build(tiny: bool, device: str, dtype: torch.dtype) -> DeepseekOcr2Backend:
    processor = local_processor()
    config = tiny_config(processor.tokenizer) if tiny else full_config(processor.tokenizer)
    with torch.device(device):  # initialise where it runs: 3.4 B parameters
        model: Any = random_model(config, seed=0)
    backend = DeepseekOcr2Backend(model.to(dtype), processor, "bench-random", trained=False)
    backend.eos = set()  # every question decodes exactly --new-tokens
    return backend


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_encode(
    backend: DeepseekOcr2Backend, n_pages: int, batches: list[int], repeats: int, distinct: int
) -> list[dict[str, Any]]:
    modes = {  # mode: (tier, renders of that tier)
        "global 1024 (base)": ("base", [page_render(i, False) for i in range(distinct)]),
        "global 768 (small)": (
            "small",
            [ingest.tier_image(page_render(i, False), "small") for i in range(distinct)],
        ),
        "global + 4 crops (dense base)": (
            "base",
            [page_render(i, True) for i in range(distinct)],
        ),
    }
    rows = []
    for mode, (tier, renders) in modes.items():
        pages = [renders[i % len(renders)] for i in range(n_pages)]
        crops = "crops" in mode
        for batch in batches:
            backend.encode(pages[:batch], tier)  # warm up: kernels, allocator
            rates = []
            for _ in range(repeats):
                sync()
                started = time.perf_counter()
                for i in range(0, n_pages, batch):
                    out = backend.encode(pages[i : i + batch], tier)
                    assert ("crops" in out[0]) == crops, mode
                sync()
                rates.append(n_pages / (time.perf_counter() - started))
            tokens = backend.tier_tokens[tier] + (4 * 144 if crops else 0)
            rows.append({"mode": mode, "tokens": tokens, "batch": batch,
                         "pages_per_s": round(median(rates), 2)})  # fmt: skip
            print(f"encode {mode:32s} batch {batch:3d}: {rows[-1]['pages_per_s']:8.2f} pages/s",
                  file=sys.stderr)  # fmt: skip
    return rows


def bench_ask(
    backend: DeepseekOcr2Backend, counts: list[str], new_tokens: int, repeats: int, distinct: int
) -> list[dict[str, Any]]:
    most = backend.context_budget // min(backend.tier_tokens.values())
    wanted = sorted({most if c == "max" else min(int(c), most) for c in counts})
    distinct = min(distinct, wanted[-1])
    renders = [page_render(i, False) for i in range(distinct)]
    encoded = {
        "base": backend.encode(renders, "base"),
        "small": backend.encode([ingest.tier_image(r, "small") for r in renders], "small"),
    }
    rows = []
    for n in wanted:
        packing = pack([Candidate(i, float(i)) for i in range(n)], backend.tier_tokens,
                       backend.context_budget)  # fmt: skip
        pages = [
            ContextPage("bench", i + 1, f"benchmark-document.pdf p.{i + 1}", tier,
                        tensors=encoded[tier][i % distinct])
            for i, tier in packing.chosen
        ]  # fmt: skip
        backend.answer("Warm up?", pages[:1], max_new_tokens=2)
        first, second = [], []
        for r in range(repeats):
            backend._prefixes.clear()  # a cold cache: the pages' kv is computed
            backend.answer(f"What was the revenue growth? ({r})", pages, new_tokens)
            first.append(backend.last_call)
            backend.answer(f"Who works in Lisbon? ({r})", pages, new_tokens)
            second.append(backend.last_call)
        assert all(c is not None and not c.prefix_reused for c in first)
        assert all(c is not None and c.prefix_reused for c in second)

        def point(calls: list[Any]) -> dict[str, float]:
            return {
                "prefill_ms": round(1000 * median([c.prefill_s for c in calls]), 2),
                "decode_ms_per_token": round(
                    1000 * median([c.decode_s / max(len(c.new_tokens) - 1, 1) for c in calls]), 2
                ),
                "total_ms": round(1000 * median([c.prefill_s + c.decode_s for c in calls]), 2),
            }

        call = first[0]
        assert call is not None
        rows.append({
            "pages": len(pages), "left_out": len(packing.left_out), "tiers": packing.tiers,
            "vision_tokens": packing.tokens,
            "positions": call.prefix_tokens + call.suffix_tokens + new_tokens,
            "new_tokens": new_tokens, "first": point(first), "second": point(second),
        })  # fmt: skip
        print(f"ask {len(pages):3d} pages {packing.tiers}: first {rows[-1]['first']}, "
              f"second {rows[-1]['second']}", file=sys.stderr)  # fmt: skip
    return rows


def markdown(result: dict[str, Any]) -> str:
    out = [
        f"device: {result['device']}, {result['dtype']}, torch {result['torch']}, "
        f"transformers {result['transformers']}; `{result['command']}`",
        "",
        "| encoding mode | decoder tokens / page | batch | pages / s |",
        "|---|---|---|---|",
    ]
    out += [f"| {r['mode']} | {r['tokens']} | {r['batch']} | {r['pages_per_s']} |"
            for r in result["encode"]]  # fmt: skip
    out += [
        "",
        "| packed pages | tiers | positions | first: prefill ms | first: decode ms/token "
        "| second (kv reused): prefill ms | second: decode ms/token |",
        "|---|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r['pages']} | {r['tiers']} | {r['positions']} | {r['first']['prefill_ms']} "
        f"| {r['first']['decode_ms_per_token']} | {r['second']['prefill_ms']} "
        f"| {r['second']['decode_ms_per_token']} |"
        for r in result["ask"]
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny config (a CPU smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--encode-pages", type=int)
    parser.add_argument("--batch", help="pages per encoder call, comma-separated")
    parser.add_argument("--ask-pages", help='packed pages per question, e.g. "1,8,32,max"')
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    k = 1 if args.tiny else 0  # which default
    dtype = torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32
    backend = build(args.tiny, args.device, dtype)
    repeats = args.repeats or REPEATS[k]
    result: dict[str, Any] = {
        "device": (
            torch.cuda.get_device_name(args.device)
            if args.device.startswith("cuda")
            else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
        ),
        "dtype": str(dtype).removeprefix("torch."),
        "config": "tiny" if args.tiny else "full-size DeepSeek-OCR 2, random weights",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": "python -m lab.bench_deepseek_ocr2 " + " ".join(argv or sys.argv[1:]),
        "context_budget": backend.context_budget,
        "max_positions": backend.max_positions,
    }  # fmt: skip
    batches = [int(b) for b in (args.batch or BATCHES[k]).split(",")]
    n_pages, distinct = args.encode_pages or ENCODE_PAGES[k], DISTINCT_PAGES[k]
    result["encode"] = bench_encode(backend, n_pages, batches, repeats, distinct)
    counts = (args.ask_pages or ASK_PAGES[k]).split(",")
    new_tokens = args.new_tokens or NEW_TOKENS[k]
    result["ask"] = bench_ask(backend, counts, new_tokens, repeats, distinct)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
