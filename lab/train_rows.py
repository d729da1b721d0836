"""Teach the vision encoder to read: a row reader trained with CTC over a tier's tokens.

    python -m lab.train_rows --max_minutes 60            # from the shipped reference weights
    python -m lab.train_rows --resume                    # go on from out_dir/ckpt.pt
    python -m lab.train_rows --export lab/weights/rows-base.safetensors   # ckpt -> fp16 file
    python -m lab.train_rows --init lab/weights/rows-base.safetensors     # a new run from it
    python -m lab.train_rows --config smoke              # the whole loop in seconds
    python -m lab.train_rows --tier base,small,tiny --tier_weights 2,1,1 --schedule cosine
                                                         # the tiers mixed, the rate decayed

Issue 9, point 1: an ordered, character-level target that reaches the encoder. The vision
tokens of a page form a g x g grid of cells (one token per 64 x 64 pixels of the tier's render).
The target of a row of cells is the text of the lines whose vertical centre lies in it, top to
bottom, each line's words left to right (``row_targets``, from the data engine's word boxes). The
reader (``RowReader``) turns each token into ``strips`` x ``slots`` feature vectors (a strip: a
horizontal band of the cell, about one line high) and lays a row out in the order a line is read
when no two lines share a strip: strip by strip, and within a strip cell by cell, left to right.
A 1D convolution over that sequence and a byte classifier give CTC's per-position distribution
(class 0, the NUL byte, is the blank). The encoder is trained with it, from the shipped weights:
the tokens must come to hold their cells' characters in order, which is what a read-back from
the optical memory needs (DeepSeek-OCR's "the vision tokens can be decoded back to text").

Held-out: greedy CTC decoding of every row of held-out pages, the rows joined by a space, scored
against the row targets joined the same way with the eval's character precision (1 - edit
distance / reference length, whitespace collapsed): the curve against training minutes is in
out_dir/log.jsonl. The reader is a lab head; the encoder it trains changes the stored tensors, so
it ships only with new reference weights, when ``make eval`` shows them better.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ingest.tiers import CANONICAL, get_tier
from kb.model.reference.backend import DEFAULT_WEIGHTS, load_model, random_model, save_weights
from kb.model.reference.configuration_reference import ReferenceConfig
from kb.model.reference.modeling_reference import CellReader, ReferenceModel, VisionEncoder
from kb.model.reference.processing_reference import BLANK, GUTTER, assemble
from kb.model.reference.processing_reference import ctc_greedy as greedy
from lab import data
from lab.config import parse_config, target_range
from lab.metrics import precision

DEFAULTS: dict[str, Any] = {
    "out_dir": "data/train/rows",
    "cache_dir": "data/train/rows-pool",
    # the tier trained and measured; several, comma-separated ("base,small,tiny"), mix them: each
    # step reads one, drawn with --tier_weights (default equal), and held-out reads every one
    "tier": "base",
    "tier_weights": "",
    "max_minutes": 60.0,
    "max_steps": 0,
    "resume": False,
    # "shipped": the reference weights; "fresh": their architecture, randomly initialised (the
    # encoder then learns from the ordered target only, not from the bag-of-words it was trained
    # with); "tiny": a random tiny config (tests)
    "model": "shipped",
    "init": "",  # a file --export wrote (encoder and reader, fp16): a later session goes on from it
    "export": "",  # write out_dir/ckpt.pt's encoder and reader to this file, then stop
    # cell layout: write reference weights to this file, then stop -- the shipped ones (or
    # --base) with out_dir/ckpt.pt's vision encoder and its reader as the cell reader
    "ship": "",
    "base": "",
    "train_documents": 400,  # one-page training documents in the pool (rendered once)
    "heldout_documents": 12,
    # "lo,hi": the training documents' page lengths in characters, log-uniform, each page's style
    # shrunk to fit as make eval's read-back pages are (dense pages in small type); "" = the
    # data's own mix (500-3,600, not shrunk). Held-out pages keep the data's own mix.
    "target_chars": "",
    # pages of real technical prose (lab.data.real_page: READMEs and docstrings, code listings)
    # in the training pool, beside the documents; held-out ones are read as precision_real
    "train_real": 0,
    "heldout_real": 0,
    "batch": 4,  # pages per step
    "strips": 8,  # bands per cell: at base 8 px of the canonical render, under a line's height
    "slots": 8,  # CTC positions per strip and cell: a cell line holds ~5-9 characters at base
    "hidden": 96,
    # "row": one CTC sequence per row of cells (strip by strip, then cell by cell); "cell": one
    # per token, its own characters (cell_targets; strips x slots positions, e.g. 1 x 48)
    "layout": "row",
    # cell layout: train on a random crop of crop x crop cells of each batch's pages instead of
    # whole pages (0): the same pixels buy more optimiser steps; held-out reads whole pages
    "crop": 0,
    # cell layout: the targets mark a two-column page's gutter (cell_targets' GUTTER, where
    # gutter_x finds one), so the read-back can be assembled column by column, as the page's
    # text layer reads; held-out pages are then scored against that order. The shipped weights
    # (since reference-4ce2bc18f6d0) mark it: a run that goes on from them keeps it on
    "columns": True,
    "groups": 0,  # cell layout: the cell reader's groups (configuration_reference.cell_groups)
    # --model fresh or tiny: the encoder's compressor ("conv", "stack"); "" as shipped
    "compressor": "",
    "lr": 3e-4,  # the reader
    "encoder_lr": 1e-4,  # the vision encoder (from trained weights)
    "warmup": 50,
    # "constant" after warmup, or "cosine": down to min_lr x the rate at max_minutes of this run
    # (a --resume of a cosine run goes on down the same curve and stops where it ends)
    "schedule": "constant",
    "min_lr": 0.05,
    "weight_decay": 0.01,
    "threads": 1,
    "eval_every": 10.0,  # minutes
    "seed": 0,
}
PRESETS = {
    "smoke": {
        "model": "tiny",
        "tier": "gist",
        "max_steps": 3,
        "train_documents": 2,
        "heldout_documents": 1,
        "batch": 1,
        "strips": 2,
        "slots": 4,
        "hidden": 16,
        "eval_every": 1e9,
    }
}


# --model tiny (tests): a random model this small
TINY: dict[str, Any] = dict(d_model=32, n_heads=2, n_layers=2, enc_conv_dim=8,
                            enc_conv_blocks=1, enc_layers=1, text_layers=1,
                            span_dim=8)  # fmt: skip


class RowReader(nn.Module):
    """Tokens (B, g*g, D) of one tier -> CTC log-probabilities per row of cells.

    Each token becomes strips x slots vectors; a row's sequence is ordered (strip, cell, slot):
    the order in which a row's lines are read when each line lies within one strip."""

    def __init__(self, d_model: int, strips: int, slots: int, hidden: int):
        super().__init__()
        self.strips, self.slots, self.hidden = strips, slots, hidden
        self.expand = nn.Linear(d_model, strips * slots * hidden)
        self.mix = nn.Conv1d(hidden, hidden, kernel_size=5, padding=2)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 256)

    def forward(self, tokens: torch.Tensor, cells: bool = False) -> torch.Tensor:
        """(B, g*g, D) -> log-probs (T, B*g, 256), T = strips * g * slots, rows in raster order;
        with ``cells``, one sequence per token instead: (strips * slots, B*g*g, 256)."""
        B, n, _ = tokens.shape
        g = int(round(n**0.5))
        if g * g != n:
            raise ValueError(f"{n} tokens are not a square grid")
        if cells:
            x = self.expand(tokens).view(B * n, self.strips * self.slots, self.hidden)
        else:
            x = self.expand(tokens).view(B, g, g, self.strips, self.slots, self.hidden)
            x = x.permute(0, 1, 3, 2, 4, 5).reshape(
                B * g, self.strips * g * self.slots, self.hidden
            )
        x = x + F.gelu(self.mix(x.transpose(1, 2))).transpose(1, 2)  # (B*g, T, h)
        logits = self.out(self.norm(x))  # (B*g, T, 256)
        return F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B*g, 256)


def line_groups(words: list) -> list[tuple[float, list]]:
    """Word boxes (x0, y0, x1, y1, word) -> lines (vertical centre, words left to right), top to
    bottom: words whose centres lie within half a word height of a line's first word join it."""
    boxes = sorted(words, key=lambda w: ((w[1] + w[3]) / 2, w[0]))
    lines: list[tuple[float, float, list]] = []  # (centre, height, words)
    for w in boxes:
        cy, h = (w[1] + w[3]) / 2, max(1.0, w[3] - w[1])
        if lines and abs(cy - lines[-1][0]) <= 0.5 * min(h, lines[-1][1]):
            lines[-1][2].append(w)
        else:
            lines.append((cy, h, [w]))
    return [(cy, sorted(ws, key=lambda w: w[0])) for cy, _, ws in lines]


def lines_of(words: list) -> list[tuple[float, str]]:
    """Word boxes -> lines (vertical centre, text), top to bottom (``line_groups``)."""
    return [(cy, " ".join(str(w[4]) for w in ws)) for cy, ws in line_groups(words)]


def row_targets(words: list, grid: int) -> list[str]:
    """Per row of a grid x grid token layout of the canonical render, the text of the lines
    whose vertical centre lies in it, top to bottom, joined by a space."""
    rows: list[list[str]] = [[] for _ in range(grid)]
    for cy, text in lines_of(words):
        rows[min(grid - 1, max(0, int(cy * grid / CANONICAL.size)))].append(text)
    return [" ".join(r) for r in rows]


# A gap between two words of a line at least this wide (canonical pixels, ~3 spaces at 10 pt)
# may be a column gutter; a gutter is such a gap at the same place in this share of the lines
# that have words on both sides of it.
GUTTER_MIN_GAP = 14.0
GUTTER_CROSSING_SHARE = 0.5
GUTTER_MAX_TABLE = 0.1  # more lines than this share with two wide gaps or more: a table


def gutter_x(words: list) -> float | None:
    """The x of a page's column gutter (canonical pixels), or None for a page of one column: the
    x in the middle half of the text's width that the most lines cross with a gap of at least
    GUTTER_MIN_GAP, kept when at least GUTTER_CROSSING_SHARE of the lines with words on both
    sides of it (and at least 4) cross it so. A title across both columns is such a line without
    a gap. A page where more than GUTTER_MAX_TABLE of the lines have two wide gaps or more is a
    table (rows of three columns or more), read row by row: None."""
    lines = [ws for _, ws in line_groups(words)]
    if len(lines) < 4:
        return None
    lo = min(float(w[0]) for w in words)
    hi = max(float(w[2]) for w in words)
    wide = [
        [(float(a[2]), float(b[0])) for a, b in zip(ws, ws[1:], strict=False)
         if float(b[0]) - float(a[2]) >= GUTTER_MIN_GAP]
        for ws in lines
    ]  # fmt: skip
    if sum(len(w) > 1 for w in wide) > GUTTER_MAX_TABLE * len(lines):
        return None  # a table: its rows are read across, as its text is
    gaps = [g for w in wide for g in w]
    xs = range(int(lo + (hi - lo) / 4), int(hi - (hi - lo) / 4))
    crossing = [sum(a <= x <= b for a, b in gaps) for x in xs]
    best = max(crossing, default=0)
    if not best:
        return None
    first = crossing.index(best)  # the middle of the first run of x that the most lines cross
    run = next((i for i in range(first, len(crossing)) if crossing[i] < best), len(crossing))
    best_x = float(xs[(first + run - 1) // 2])
    both = sum(ws[0][0] < best_x < ws[-1][2] for ws in lines)
    return best_x if best >= max(4, GUTTER_CROSSING_SHARE * both) else None


def cell_targets(words: list, grid: int, columns: bool = False) -> list[str]:
    """Per token of a grid x grid layout (raster order), the characters that lie in its cell:
    the lines whose vertical centre lies in its row (as ``row_targets``), each cut to the
    characters whose horizontal centre lies in its column, joined by a newline. Every cell of a
    row holds as many newlines as the row has lines, so ``assemble`` can put the lines back
    together. A character's centre is interpolated within its word's box; the space between two
    words lies half-way between them."""
    size = CANONICAL.size

    def at(v: float) -> int:
        return min(grid - 1, max(0, int(v * grid / size)))

    cells: list[list[list[str]]] = [[[] for _ in range(grid)] for _ in range(grid)]
    gutter = gutter_x(words) if columns else None
    for cy, line in line_groups(words):
        pieces = [""] * grid
        for i, w in enumerate(line):
            x0, x1, text = float(w[0]), float(w[2]), str(w[4])
            if i:
                before = float(line[i - 1][2])
                if gutter is not None and before <= gutter <= x0 and x0 - before >= GUTTER_MIN_GAP:
                    pieces[at(gutter)] += GUTTER  # the columns' lines meet here
                else:
                    pieces[at((before + x0) / 2)] += " "
            for j, ch in enumerate(text):
                pieces[at(x0 + (j + 0.5) * (x1 - x0) / max(1, len(text)))] += ch
        for c in range(grid):
            cells[at(cy)][c].append(pieces[c])
    return ["\n".join(cells[r][c]) for r in range(grid) for c in range(grid)]


def fit_ctc(target: list[int], positions: int) -> list[int]:
    """The longest prefix of ``target`` that CTC can align to ``positions`` inputs: each byte
    takes one position, and a byte repeating the one before it one more (the blank between)."""
    need = 0
    for i, b in enumerate(target):
        need += 1 + (i > 0 and b == target[i - 1])
        if need > positions:
            return target[:i]
    return target


def encode_targets(texts: list[str], positions: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Row or cell texts -> concatenated UTF-8 targets, lengths, and how many bytes were cut to
    fit ``positions`` CTC inputs (``fit_ctc``: a longer text cannot be aligned)."""
    out, lengths, cut = [], [], 0
    for text in texts:
        raw = text.encode("utf-8")
        b = fit_ctc([c for c in raw if c != BLANK], positions)
        cut += len(raw) - len(b)
        out += b
        lengths.append(len(b))
    return torch.tensor(out, dtype=torch.long), torch.tensor(lengths, dtype=torch.long), cut


def pixels_of(pool: data.Pool, tier: str, pages: list[int]) -> torch.Tensor:
    """The pages' tier renders as the encoder's input: ink = 1, paper = 0, (b, 1, S, S)."""
    raw = torch.from_numpy(np.stack([pool.tiers[tier][p] for p in pages]))
    return 1.0 - raw.float()[:, None] / 255.0


def step_loss(
    model,
    reader: RowReader | CellReader,
    pool: data.Pool,
    tier: str,
    pages: list[int],
    layout: str = "row",
    crop: tuple[int, int, int] | None = None,
    columns: bool = False,
):
    """Mean CTC loss per target byte over the rows (or cells) of ``pages``, and the bytes cut.
    ``crop`` (cell layout only): (row, column, k), the k x k cells from that cell on are read
    instead of the whole page."""
    pixels = pixels_of(pool, tier, pages)
    g = get_tier(tier).grid
    cells = layout == "cell"
    texts = [
        t
        for p in pages
        for t in (
            cell_targets(pool.tier_words(p, tier), g, columns)
            if cells
            else row_targets(pool.tier_words(p, tier), g)
        )
    ]
    if crop is not None:
        if not cells:
            raise ValueError("crops are read cell by cell (--layout cell)")
        r0, c0, k = crop
        side = pixels.shape[-1] // g
        pixels = pixels[..., r0 * side : (r0 + k) * side, c0 * side : (c0 + k) * side]
        kept = [(r0 + r) * g + c0 + c for r in range(k) for c in range(k)]
        texts = [texts[b * g * g + i] for b in range(len(pages)) for i in kept]
        tokens = model.vision(pixels, tier, at=(r0, c0))  # (b, k*k, D)
    else:
        tokens = model.encode_images(pixels, tier)  # (b, g*g, D)
    log_probs = reader(tokens)  # (T, b*g rows or b*g*g cells, 256)
    targets, lengths, cut = encode_targets(texts, log_probs.shape[0])
    inputs = torch.full((log_probs.shape[1],), log_probs.shape[0], dtype=torch.long)
    loss = F.ctc_loss(
        log_probs, targets, inputs, lengths, blank=BLANK, reduction="sum", zero_infinity=True
    )
    return loss / max(1, int(lengths.sum())), cut


@torch.no_grad()
def evaluate(
    model,
    reader: RowReader | CellReader,
    pool: data.Pool,
    tier: str,
    layout: str = "row",
    columns: bool = False,
) -> dict[str, Any]:
    """Held-out pages read row by row: mean character precision of the page (rows joined by a
    space) against its row targets joined the same way, and one example. ``columns`` (cell
    layout): against its cell targets with the gutter marked, assembled column by column."""
    model.eval()
    reader.eval()
    g = get_tier(tier).grid
    scores: list[float] = []
    example: dict[str, str] = {}
    for p in range(len(pool.texts)):
        if columns and layout == "cell":
            truth = assemble(cell_targets(pool.tier_words(p, tier), g, columns=True), g)
        else:
            truth = " ".join(t for t in row_targets(pool.tier_words(p, tier), g) if t)
        if not truth.strip():
            continue
        tokens = model.encode_images(pixels_of(pool, tier, [p]), tier)
        if layout == "cell":
            read = assemble(greedy(reader(tokens)), g)
        else:
            read = " ".join(r for r in greedy(reader(tokens)) if r)
        scores.append(precision(read, truth))
        if not example:
            example = {"truth": truth[:160], "read": read[:160]}
    model.train()
    reader.train()
    return {"precision": round(float(np.mean(scores)), 4) if scores else None, "example": example}


def ship(
    encoder: VisionEncoder, reader: nn.Module, cfg: dict[str, Any], step: int, minutes: float
) -> dict[str, Any]:
    """Reference weights with this run's encoder and cell reader: the base weights' every other
    part (text tier, reader, copy path) unchanged, the config's cell reader set to this one."""
    base, config, meta = load_model(cfg["base"] or DEFAULT_WEIGHTS)
    assert isinstance(reader, CellReader)
    config = replace(
        config,
        compressor=encoder.config.compressor,
        cell_slots=reader.slots,
        cell_hidden=reader.hidden,
        cell_groups=reader.groups,
    )
    model = ReferenceModel(config)
    state = base.state_dict()
    state |= {f"vision.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"cell_reader.{k}": v for k, v in reader.state_dict().items()}
    model.load_state_dict(state)
    # the base's own metadata (its training step and log) stays: it says what trained the rest
    extra: dict[str, Any] = {
        k: v for k, v in meta.items() if k not in ("format", "config", "sha256")
    }
    extra |= {
        "base": meta.get("sha256", "")[:12],
        "cell_reader": {"step": step, "minutes": round(minutes, 1), "tier": cfg["tier"]},
    }
    digest = save_weights(model, config, cfg["ship"], extra)
    return {"step": step, "minutes": minutes, "shipped": cfg["ship"], "sha256": digest}


def tiers_of(cfg: dict[str, Any]) -> tuple[list[str], list[float]]:
    """--tier and --tier_weights -> the tiers trained and the weight of each."""
    tiers = [t.strip() for t in cfg["tier"].split(",") if t.strip()]
    for t in tiers:
        get_tier(t)  # an unknown tier fails here, before the pool is rendered
    weights = [float(w) for w in cfg["tier_weights"].split(",")] if cfg["tier_weights"] else []
    if weights and len(weights) != len(tiers):
        raise SystemExit(f"--tier_weights: one per tier ({len(tiers)}), not {len(weights)}")
    return tiers, weights or [1.0] * len(tiers)


def schedule(cfg: dict[str, Any], step: int, fraction: float) -> float:
    """The learning-rate factor: linear warmup over ``warmup`` steps, then constant, or a cosine
    from 1 down to ``min_lr`` over ``fraction`` (0..1) of this run's minutes."""
    warm = min(1.0, (step + 1) / cfg["warmup"])
    if cfg["schedule"] == "constant":
        return warm
    if cfg["schedule"] != "cosine":
        raise SystemExit(f"--schedule: 'constant' or 'cosine', not {cfg['schedule']!r}")
    floor = cfg["min_lr"]
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction))))


def measure(
    model,
    reader,
    pool: data.Pool,
    tiers: list[str],
    layout: str,
    real: data.Pool | None = None,
    columns: bool = False,
) -> dict[str, Any]:
    """``evaluate`` at each tier: the first tier's figures as they were, the others' precision
    as ``precision_<tier>``; the held-out real pages' as ``precision_real[_<tier>]``."""
    row = evaluate(model, reader, pool, tiers[0], layout, columns)
    for t in tiers[1:]:
        row[f"precision_{t}"] = evaluate(model, reader, pool, t, layout, columns)["precision"]
    if real is not None and real.texts:
        for i, t in enumerate(tiers):
            name = "precision_real" + ("" if i == 0 else f"_{t}")
            row[name] = evaluate(model, reader, real, t, layout, columns)["precision"]
    return row


def build(
    cfg: dict[str, Any], split: str, documents: int, real: int = 0, dense: bool = False
) -> data.Pool:
    spec = data.PoolSpec(
        split=split,
        documents=documents,
        needles=0,
        fillers=0,
        cross_sets=0,
        real=real,
        max_pages=1,
        target_chars=target_range(cfg["target_chars"]) if dense else None,
    )
    tiers = tuple(tiers_of(cfg)[0])
    return data.build_pool(spec, cfg["cache_dir"], tiers, workers=1, log=lambda m: None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_config(DEFAULTS, PRESETS, argv, __doc__ or "")
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "ckpt.pt", out / "log.jsonl"
    start: dict[str, torch.Tensor] = {}
    step, minutes_before = 0, 0.0
    if cfg["init"]:
        start = load_file(cfg["init"])
        with safe_open(cfg["init"], framework="pt") as f:
            meta = f.metadata() or {}
        step, minutes_before = int(meta.get("step", 0)), float(meta.get("minutes", 0.0))
    if cfg["layout"] not in ("row", "cell"):
        raise SystemExit(f"--layout: 'row' or 'cell', not {cfg['layout']!r}")
    if cfg["crop"] and cfg["layout"] != "cell":
        raise SystemExit("--crop needs --layout cell")
    if cfg["model"] not in ("shipped", "fresh", "tiny"):
        raise SystemExit(f"--model: 'shipped', 'fresh' or 'tiny', not {cfg['model']!r}")
    if cfg["model"] == "tiny":
        model = random_model(ReferenceConfig(**TINY, compressor=cfg["compressor"] or "conv"))
    else:
        model, _, _ = load_model(DEFAULT_WEIGHTS)
        if cfg["model"] == "fresh":
            config = model.config
            if cfg["compressor"]:
                config = replace(config, compressor=cfg["compressor"])
            model = random_model(config)
    reader: RowReader | CellReader
    if cfg["layout"] == "cell":  # the model's own cell reader, as the service reads with it
        slots = cfg["strips"] * cfg["slots"]
        reader = CellReader(model.config.d_model, slots, cfg["hidden"], cfg["groups"])
    else:
        reader = RowReader(model.config.d_model, cfg["strips"], cfg["slots"], cfg["hidden"])
    encoder = model.vision
    if start:
        encoder.load_state_dict({k[8:]: v.float() for k, v in start.items() if k[:8] == "encoder."})
        reader.load_state_dict({k[7:]: v.float() for k, v in start.items() if k[:7] == "reader."})
    groups = [
        {"params": list(encoder.parameters()), "lr": cfg["encoder_lr"]},
        {"params": list(reader.parameters()), "lr": cfg["lr"]},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=cfg["weight_decay"])
    if cfg["ship"] and cfg["layout"] != "cell":
        raise SystemExit("--ship: only a cell-layout reader is the model's cell reader")
    if cfg["resume"] or cfg["export"] or cfg["ship"]:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        encoder.load_state_dict(ckpt["encoder"])
        reader.load_state_dict(ckpt["reader"])
        opt.load_state_dict(ckpt["opt"])
        step, minutes_before = ckpt["step"], ckpt["minutes"]
    # where the cosine began: a resumed run goes on down the same curve and stops at its end
    begun = ckpt.get("begun", minutes_before) if cfg["resume"] else minutes_before
    if cfg["export"]:
        state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        state |= {f"reader.{k}": v for k, v in reader.state_dict().items()}
        meta = {"step": str(step), "minutes": f"{minutes_before:.1f}", "tier": cfg["tier"]}
        save_file({k: v.half().contiguous() for k, v in state.items()}, cfg["export"], meta)
        return {"step": step, "minutes": minutes_before, "exported": cfg["export"]}
    if cfg["ship"]:
        return ship(encoder, reader, cfg, step, minutes_before)
    tiers, weights = tiers_of(cfg)
    train = build(cfg, "train", cfg["train_documents"], cfg["train_real"], dense=True)
    heldout = build(cfg, "heldout", cfg["heldout_documents"])
    real = build(cfg, "heldout", 0, cfg["heldout_real"]) if cfg["heldout_real"] else None
    stop = {"now": False}
    columns = bool(cfg["columns"]) and cfg["layout"] == "cell"  # rows are read across
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    base_lrs = [g["lr"] for g in groups]
    t0 = last_eval = time.time()
    model.train()

    def minutes() -> float:
        return minutes_before + (time.time() - t0) / 60

    def log(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def checkpoint() -> None:
        torch.save(
            {
                "encoder": encoder.state_dict(),
                "reader": reader.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "minutes": minutes(),
                "begun": begun,
                "cfg": cfg,
            },
            ckpt_path,
        )

    if not cfg["resume"]:
        log(
            {
                "step": step,
                "minutes": round(minutes_before, 2),
                **measure(model, reader, heldout, tiers, cfg["layout"], real, columns),
            }
        )
    rng = random.Random(f"kb-rows/{cfg['seed']}/{step}")
    while not stop["now"]:
        if cfg["max_steps"] and step >= cfg["max_steps"]:
            break
        origin = begun if cfg["schedule"] == "cosine" else minutes_before
        if minutes() - origin >= cfg["max_minutes"]:
            break
        factor = schedule(cfg, step, (minutes() - begun) / cfg["max_minutes"])
        for g, lr in zip(groups, base_lrs, strict=True):
            g["lr"] = lr * factor
        tier = rng.choices(tiers, weights)[0] if len(tiers) > 1 else tiers[0]
        pages = [rng.randrange(len(train.texts)) for _ in range(cfg["batch"])]
        crop = None
        if cfg["crop"]:
            k = min(cfg["crop"], get_tier(tier).grid)
            far = get_tier(tier).grid - k
            crop = (rng.randint(0, far), rng.randint(0, far), k)
        loss, cut = step_loss(model, reader, train, tier, pages, cfg["layout"], crop, columns)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        if step % 10 == 0 or cfg["max_steps"]:
            log({"step": step, "minutes": round(minutes(), 2), "loss": round(loss.item(), 4),
                 "cut_bytes": cut, "tier": tier, "lr_factor": round(factor, 4)})  # fmt: skip
        if time.time() - last_eval >= cfg["eval_every"] * 60:
            held = measure(model, reader, heldout, tiers, cfg["layout"], real, columns)
            log({"step": step, "minutes": round(minutes(), 2), **held})
            checkpoint()
            last_eval = time.time()
    final = {"step": step, "minutes": round(minutes(), 2),
             **measure(model, reader, heldout, tiers, cfg["layout"], real, columns)}  # fmt: skip
    log(final)
    checkpoint()
    return final


if __name__ == "__main__":
    main()
