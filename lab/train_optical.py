"""Train the reference model on synthetic documents. Flat and resumable, after nanoGPT's train.py.

    python -m lab.train_optical --config smoke   # the CPU, seconds: the whole loop on a tiny model
    python -m lab.train_optical --config cpu     # what a 2-core CPU does in 85 min (shipped)
    python -m lab.train_optical --config gpu     # the real run: deploy/train_on_device.sh
    python -m lab.train_optical --out_dir D --resume            # go on from D/ckpt.pt
    python -m lab.train_optical --out_dir D --export            # D/ckpt.pt -> shipped weights
    python -m lab.train_optical --config cpu \
        --init_from kb/model/reference/weights/reference.safetensors
                                            # go on from shipped weights (no checkpoint needed)

Every default below can be overridden on the command line (``--lr 3e-4``); a preset
(``--config``) sets several at once and explicit flags win over it.

Three tasks, mixed in every batch, each prompted exactly as the backend prompts at inference
(processing_reference.read_prompt / ask_prompt) and reading a memory packed the way
``ReferenceModel.pack`` packs cached pages (per-page kv with its page signature, concatenated):
  read    one page at a random tier -> its text layer (BOS READ text EOS). Targets are cut
          to ``read_bytes`` (no EOS then, so the model never learns to stop early): on a CPU the
          top of the page only; on a GPU whole pages.
  needle  a page with a fact among N-1 other pages (N drawn log-uniform up to ``haystack``, the
          fact's page at ``needle_tiers``, tiny first: the product's headline) -> the answer.
  cross   the pages of a cross-document set (data.cross_document_set) -> a count or comparison.
Tiers are drawn per page from ``*_tiers`` weights; "text" is the exact tier, encoded from the
page's text as ReferenceBackend.page_kv does. Pages of a haystack beyond ``grad_pages`` are
encoded without gradient: they are distractors, and their backward would cost most of the step.

Two aids against the failure of the first CPU run (a reader that never used its memory and an
encoder whose output collapsed to one vector): every vision token encoded with gradient also
predicts the words in its cell (``aux_word``, a head that is not shipped), and a share of the
reader's input bytes is dropped (``input_dropout``). The eval's ``gain_read_*`` figures (loss
with another page's memory minus loss with the right one) say whether the memory is used.

The loss is the mean over a sample's target bytes, averaged over samples (an 8-byte answer weighs
as much as a 300-byte read-back). A checkpoint (out_dir/ckpt.pt) carries the model config, the
training config, step, optimizer, data version and tokenizer facts; ``load_checkpoint`` rebuilds
the model from it through ReferenceConfig.from_dict, so old checkpoints keep loading.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ingest.tiers import CANONICAL, get_tier
from kb.model.reference.backend import DEFAULT_WEIGHTS, load_model, save_weights
from kb.model.reference.configuration_reference import ReferenceConfig
from kb.model.reference.modeling_reference import ReferenceModel
from kb.model.reference.processing_reference import (
    EOS,
    PAD,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    ask_prompt,
    decode,
    encode_text,
    read_prompt,
    text_to_ids,
)
from lab.config import parse_config, target_range
from lab.data import DATA_VERSION, Pool, PoolSpec, build_pool
from lab.metrics import precision

CHECKPOINT_FORMAT = "kb-reference-ckpt/1"

# --- defaults (the "gpu" preset below is the real run; others override) ---
_names_before_defaults = set(globals())
out_dir = "data/train/reference"
data_dir = "data/synth"  # rendered pools are cached here, keyed by their spec and data version
device = "cpu"
threads = 2  # torch threads on the CPU: this machine has two cores
seed = 1337
model = "{}"  # JSON overrides of ReferenceConfig; "{}" = the shipped architecture's defaults
# data
pool_documents, pool_needles, pool_fillers, pool_cross = 20000, 20000, 5000, 3000
pool_max_pages = 3
pool_target_chars = ""  # "lo,hi": document page lengths (log-uniform); "" = the data's own mix
heldout_documents, heldout_needles, heldout_fillers, heldout_cross = 200, 200, 100, 50
pool_workers = 16
# task mix and tiers ("tier:weight,...")
p_read, p_needle, p_cross = 0.5, 0.4, 0.1
# "text" is the exact tier (one memory token per 4 bytes of the page's text): the design gives it
# to the newest and pinned pages (kb.packer does not yet: it packs the vision tiers only), so the
# reader must know it; copying from it is also the easiest way for the reader to learn that its
# memory is worth reading (the 70-minute CPU run's reader never used its memory, and its vision
# encoder collapsed to one constant output for every page).
read_tiers = "text:1,gist:1,tiny:3,small:2,base:2"
needle_tiers = "text:1,gist:1,tiny:4,small:1,base:1"
haystack_tiers = "text:1,gist:2,tiny:3,small:1"
read_bytes = 4096  # read-back targets are cut here (a full page is 600-5,200 bytes)
read_bytes_start = 4096  # curriculum: the cut grows linearly from this to read_bytes ...
haystack = 64  # ... and haystack sizes from haystack_start pages to this
haystack_start = 2
curriculum_steps = 20000
grad_pages = 4  # pages per haystack encoded with gradient (the fact's page always is)
# Word presence: every vision token of a page encoded with gradient also predicts which words lie
# in its cell (hashed into aux_buckets, a softmax over the words present; bucket 0 = an empty
# cell), from a linear head that is not shipped. It gives the encoder a direct, dense signal from
# the first step: without it the CPU run's encoder collapsed to one output for every page before
# the reader learnt to read, and the reader then never used its memory.
aux_word = 1.0  # weight of the word-presence loss (0 = off)
aux_buckets = 4096
# Input dropout ("word dropout", Bowman et al. 2016): this share of the reader's input bytes
# after the prompt is replaced with PAD, so the bytes written so far predict the next one less
# well and the memory is worth more; the targets are untouched.
input_dropout = 0.2
# optimisation
batch_size = 32
grad_accum = 1
max_steps = 100000
max_time_s = 0.0  # stop (checkpoint, export if asked) after this much wall time; 0 = no bound
lr = 6e-4
min_lr = 6e-5
warmup_steps = 1000
weight_decay = 0.05
beta1, beta2 = 0.9, 0.98
grad_clip = 1.0
amp = "bf16"  # autocast dtype on cuda ("bf16", "fp16" or "none"); the CPU always runs fp32
# bookkeeping
log_interval = 20
eval_interval = 1000
eval_samples = 64  # fixed held-out samples per eval task
eval_generate = 8  # greedy generations per eval (read-back precision, needle accuracy)
eval_read_bytes = 512  # read-back generations stop here: greedy decoding is one step per byte
ckpt_interval_s = 300.0
resume = False
# Start from shipped weights (a safetensors file written by save_weights; its sha256 is checked)
# instead of a random initialisation: the architecture is the file's (``model`` is not read), the
# optimizer starts afresh, and step and curriculum start at 0. Ignored if --resume finds a ckpt.
init_from = ""
export = False  # write the shipped weights (save_weights) from out_dir/ckpt.pt, then exit
export_path = str(DEFAULT_WEIGHTS)
export_at_end = False  # export when training stops

CONFIG_KEYS = [k for k in globals() if k not in _names_before_defaults and not k.startswith("_")]


PRESETS: dict[str, dict[str, Any]] = {
    # A tiny model on a tiny pool: the whole loop (pool, eval, checkpoint, resume) in minutes.
    "smoke": dict(
        out_dir="data/train/smoke",
        threads=1,  # a tiny model: a second thread only waits on the first (worse when shared)
        model=json.dumps(
            dict(
                enc_conv_dim=16,
                enc_conv_blocks=1,
                enc_layers=1,
                d_model=64,
                n_heads=2,
                n_layers=2,
                mlp_ratio=2,
            )  # fmt: skip
        ),
        pool_documents=12,
        pool_needles=12,
        pool_fillers=6,
        pool_cross=3,
        pool_max_pages=1,
        heldout_documents=4,
        heldout_needles=4,
        heldout_fillers=2,
        heldout_cross=1,
        pool_workers=1,
        read_tiers="gist:1,tiny:1",
        needle_tiers="gist:1,tiny:1",
        haystack_tiers="gist:1",
        read_bytes=64,
        read_bytes_start=64,
        haystack=4,
        haystack_start=2,
        curriculum_steps=10,
        batch_size=4,
        max_steps=40,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        log_interval=5,
        eval_interval=20,
        eval_samples=8,
        eval_generate=2,
        ckpt_interval_s=60.0,
    ),  # fmt: skip
    # What two CPU cores learn in about an hour: the shipped architecture, short pages, the top
    # of each page read back, small haystacks, mostly the tiny tier; no base tier (16x the
    # encoder cost of tiny).
    "cpu": dict(
        out_dir="data/train/cpu",
        # Two threads on an otherwise idle 2-core machine (1.1-2.5 s/step at batch 12, growing
        # with the curriculum's cut and haystack). Under load from other processes use
        # --threads 1: two OpenMP threads then spend most of their time waiting on each other
        # (measured: ~10 s/step with 2 threads, ~1 s with 1).
        threads=2,
        pool_documents=1500,
        pool_needles=1200,
        pool_fillers=300,
        pool_cross=150,
        pool_max_pages=1,
        pool_target_chars="300,2400",
        heldout_documents=60,
        heldout_needles=60,
        heldout_fillers=20,
        heldout_cross=10,
        pool_workers=2,
        # the text tier twice as often as gist: copying from it is where the reader first learns
        # that its memory is worth reading (~200 steps; vision read-back gains follow)
        read_tiers="text:2,gist:1,tiny:4,small:1",
        needle_tiers="text:1,gist:1,tiny:5,small:1",
        haystack_tiers="gist:1,tiny:2",
        read_bytes=384,
        read_bytes_start=128,
        haystack=8,
        haystack_start=1,
        curriculum_steps=4000,
        grad_pages=2,
        batch_size=12,
        max_steps=20000,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=200,
        log_interval=20,
        eval_interval=500,
        eval_samples=32,
        eval_generate=2,
        ckpt_interval_s=300.0,
        max_time_s=5100.0,
    ),  # fmt: skip
    # One H100 for ~20 minutes (deploy/train_on_device.sh): the defaults above, with a pool
    # that renders in ~2 minutes on 16 cores (~15,000 pages, every tier: ~26 GB on disk) and a
    # schedule bound by time rather than steps.
    "gpu": dict(
        device="cuda",
        threads=8,
        out_dir="data/train/gpu",
        pool_documents=4000,
        pool_needles=4000,
        pool_fillers=1000,
        pool_cross=500,
        read_bytes_start=512,
        haystack_start=4,
        curriculum_steps=3000,
        warmup_steps=300,
        max_steps=50000,
        max_time_s=1200.0,
        eval_interval=1000,
        ckpt_interval_s=120.0,
    ),  # fmt: skip
}


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the preset, then explicit flags (lab.config)."""
    defaults = {k: globals()[k] for k in CONFIG_KEYS}
    return parse_config(defaults, PRESETS, argv, __doc__.split("\n")[0])


def weights(spec: str) -> dict[str, float]:
    """ "tiny:3,gist:1" -> {"tiny": 3.0, "gist": 1.0}"""
    out = {}
    for part in spec.split(","):
        name, _, w = part.partition(":")
        out[name.strip()] = float(w or 1)
    return out


def pick(rng: random.Random, table: dict[str, float]) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


# ---------------------------------------------------------------------------------------------
# Samples and batches
# ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    task: str  # "read" | "needle" | "cross"
    pages: list[tuple[int, str, bool]]  # (pool page, tier, with gradient), in context order
    prompt: list[int]
    target: list[int]  # what the reader must write (EOS included when it must stop)
    answer: str = ""  # the exact answer / the full page text, for generation metrics


class Sampler:
    """Draws training (or evaluation) samples from a pool."""

    def __init__(self, pool: Pool, cfg: dict[str, Any]):
        self.pool, self.cfg = pool, cfg
        self.read_tiers = weights(cfg["read_tiers"])
        self.needle_tiers = weights(cfg["needle_tiers"])
        self.haystack_tiers = weights(cfg["haystack_tiers"])
        self.n_pages = len(pool.texts)
        self.fact_items = [
            it for it in pool.items if it.kind in ("document", "needle") and it.facts
        ]
        self.cross_items = [it for it in pool.items if it.kind == "cross" and it.facts]

    def curriculum(self, step: int) -> tuple[int, int]:
        """(read-back cut in bytes, largest haystack) at this step."""
        c = self.cfg
        t = min(step / max(c["curriculum_steps"], 1), 1.0)
        cut = int(c["read_bytes_start"] + t * (c["read_bytes"] - c["read_bytes_start"]))
        hay = int(round(c["haystack_start"] + t * (c["haystack"] - c["haystack_start"])))
        return max(cut, 1), max(hay, 1)

    def sample(self, rng: random.Random, step: int, task: str | None = None) -> Sample:
        c = self.cfg
        if task is None:
            tasks = {"read": c["p_read"], "needle": c["p_needle"], "cross": c["p_cross"]}
            if not self.cross_items:
                tasks["cross"] = 0.0
            task = pick(rng, tasks)
        cut, hay = self.curriculum(step)
        if task == "read":
            page = rng.randrange(self.n_pages)
            text = self.pool.texts[page]
            ids = encode_text(text)
            target = ids[:cut] if len(ids) > cut else ids + [EOS]
            return Sample("read", [(page, pick(rng, self.read_tiers), True)], read_prompt(),
                          target, text)  # fmt: skip
        if task == "needle":
            item = rng.choice(self.fact_items)
            question, answer, page = rng.choice([f for f in item.facts if f[2] >= 0])
            n = int(math.exp(rng.uniform(0, math.log(hay + 0.999))))  # log-uniform 1..hay
            pages = [(page, pick(rng, self.needle_tiers), True)]
            pages += self._distractors(rng, n - 1, set(item.pages), c["grad_pages"] - 1)
            pages.insert(rng.randrange(len(pages)), pages.pop(0))  # the needle at any depth
        else:
            item = rng.choice(self.cross_items)
            question, answer, _ = rng.choice(item.facts)
            pages = [(p, pick(rng, self.haystack_tiers), i < c["grad_pages"])
                     for i, p in enumerate(item.pages)]  # fmt: skip
            rng.shuffle(pages)
        return Sample(task, pages, ask_prompt(question), encode_text(answer) + [EOS], answer)

    def _distractors(self, rng, n: int, exclude: set[int], with_grad: int):
        out: list[tuple[int, str, bool]] = []
        while len(out) < n:
            page = rng.randrange(self.n_pages)
            if page not in exclude:
                exclude.add(page)
                out.append((page, pick(rng, self.haystack_tiers), len(out) < with_grad))
        return out


# (tier, with gradient) -> (the (sample, position) of each page, its input, word targets)
Groups = dict[tuple[str, bool], tuple[list[tuple[int, int]], torch.Tensor, Any]]


def word_bucket(word: str, buckets: int) -> int:
    """A word's bucket in 1..buckets-1 (0 is the empty cell): case and edge punctuation folded."""
    key = word.lower().strip(".,;:!?()[]{}\"'")
    return 1 + zlib.crc32(key.encode("utf-8", "surrogatepass")) % (buckets - 1)


def word_targets(pool: Pool, pages: list[int], tier: str, buckets: int):
    """Sparse word-presence targets of a group of pages at a vision tier: (token index into the
    flattened (b, g*g) tokens, bucket, weight) with weights summing to 1 over each token, or
    None when the pool has no word boxes."""
    if not any(pool.words[p] for p in pages):
        return None
    g = get_tier(tier).grid
    scale = g / CANONICAL.size  # canonical pixels -> cells
    rows: list[int] = []
    cols: list[int] = []
    wts: list[float] = []
    for i, p in enumerate(pages):
        cells: dict[int, set[int]] = {}
        for x0, y0, x1, y1, word in pool.tier_words(p, tier):
            cx = min(int((x0 + x1) / 2 * scale), g - 1)
            cy = min(int((y0 + y1) / 2 * scale), g - 1)
            cells.setdefault(cy * g + cx, set()).add(word_bucket(word, buckets))
        for c in range(g * g):
            found = cells.get(c) or {0}
            rows += [i * g * g + c] * len(found)
            cols += sorted(found)
            wts += [1.0 / len(found)] * len(found)
    return torch.tensor(rows), torch.tensor(cols), torch.tensor(wts)


def page_groups(pool: Pool, samples: list[Sample], cfg: dict[str, Any] | None = None) -> Groups:
    """The batch's pages grouped by (tier, with gradient): the (sample, position) of each and
    their input: pixels (b, S, S) uint8 as cached, or for the text tier the page texts' byte ids
    (b, n) padded with PAD (processing_reference.text_to_ids, then to the longest). Pure CPU
    work, done ahead by the prefetch thread. With ``cfg`` (aux_word > 0), vision pages with
    gradient also get their word targets (word_targets)."""
    members: dict[tuple[str, bool], list[tuple[int, int, int]]] = {}
    for s, sample in enumerate(samples):
        for j, (page, tier, grad) in enumerate(sample.pages):
            members.setdefault((tier, grad), []).append((s, j, page))
    groups: Groups = {}
    for key, m in members.items():
        where = [(s, j) for s, j, _ in m]
        if key[0] == "text":
            ids = [text_to_ids(pool.texts[p]) for _, _, p in m]
            n = max(len(x) for x in ids)
            padded = torch.stack([F.pad(x, (0, n - len(x)), value=PAD) for x in ids])
            groups[key] = (where, padded, None)
        else:
            pixels = np.stack([pool.tiers[key[0]][p] for _, _, p in m])  # (b, S, S) uint8
            targets = None
            if cfg and cfg["aux_word"] > 0 and key[1]:
                targets = word_targets(pool, [p for _, _, p in m], key[0], cfg["aux_buckets"])
            groups[key] = (where, torch.from_numpy(pixels), targets)
    return groups


def batch_memory(model: ReferenceModel, samples: list[Sample], groups: Groups, dev, aux=None):
    """Encode every page of the batch, per-page kv (with its page signature), then pack each
    sample's pages in its order, as ReferenceModel.pack packs cached pages: kv (B, L, 2, M, D)
    padded to the longest sample, and mask (B, M). With the word head ``aux``, also the mean
    word-presence loss over the tokens that have targets (else None)."""
    kv_of: dict[tuple[int, int], torch.Tensor] = {}
    k = model.config.text_bytes_per_token
    aux_sum, aux_tokens = None, 0
    for (tier, grad), (where, raw, targets) in groups.items():
        with nullcontext() if grad else torch.no_grad():
            if tier == "text":  # the exact tier: one memory token per 4 bytes, as the backend
                ids = raw.to(dev, non_blocking=True)  # (b, n)
                real = (ids != PAD).view(len(where), -1, k).any(-1)  # (b, n/4) real tokens
                lengths = real.sum(1).clamp(min=1).tolist()
                real[:, 0] = True  # an empty page still has its one (all-PAD) token
                kv = model.page_kv(model.encode_text(ids), real)  # (b, L, 2, n/4, D)
            else:
                # exactly processing_reference.image_to_tensor's values: ink = 1, paper = 0
                x = 1.0 - raw.to(dev, non_blocking=True).float()[:, None] / 255.0  # (b, 1, S, S)
                tokens = model.encode_images(x, tier)  # (b, T, D)
                kv = model.page_kv(tokens)  # (b, L, 2, T, D)
                lengths = [kv.shape[3]] * len(where)
                if aux is not None and targets is not None and grad:
                    rows, cols, wts = (t.to(dev) for t in targets)
                    logp = F.log_softmax(aux(tokens.flatten(0, 1)).float(), dim=-1)  # (b*T, K)
                    part = -(wts * logp[rows, cols]).sum()
                    aux_sum = part if aux_sum is None else aux_sum + part
                    aux_tokens += tokens.shape[0] * tokens.shape[1]
        # unbind, not kv[i]: the backward of b selects would fill b zero tensors of kv's size
        for key, piece, n in zip(where, kv.unbind(0), lengths, strict=True):
            kv_of[key] = piece[:, :, :n]
    per_sample = [
        torch.cat([kv_of[(s, j)] for j in range(len(sample.pages))], dim=2)  # (L, 2, M_s, D)
        for s, sample in enumerate(samples)
    ]
    M = max(k.shape[2] for k in per_sample)
    mask = torch.zeros(len(samples), M, dtype=torch.bool, device=dev)
    padded = []
    for s, kv_s in enumerate(per_sample):
        mask[s, : kv_s.shape[2]] = True
        padded.append(F.pad(kv_s, (0, 0, 0, M - kv_s.shape[2])))
    aux_loss = None if aux_sum is None else aux_sum / aux_tokens
    return torch.stack(padded), mask, aux_loss


class Prefetcher:
    """Draws and gathers the batches of the coming steps in a thread while the model trains
    (numpy gathers and page-cache reads release the GIL). Batch s depends on (seed, s) alone,
    so a resumed run sees the same data as an uninterrupted one."""

    def __init__(self, sampler: Sampler, cfg: dict[str, Any], first_step: int, depth: int = 2):
        import queue
        import threading

        self.sampler, self.cfg = sampler, cfg
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(first_step,), daemon=True)
        self.thread.start()

    def _run(self, step: int) -> None:
        import queue

        while not self.stop.is_set():
            rng = random.Random(f"{self.cfg['seed']}/{step}")
            micro = []
            for _ in range(self.cfg["grad_accum"]):
                samples = [self.sampler.sample(rng, step) for _ in range(self.cfg["batch_size"])]
                micro.append((samples, page_groups(self.sampler.pool, samples, self.cfg)))
            while not self.stop.is_set():
                try:
                    self.queue.put((step, micro), timeout=0.5)
                    break
                except queue.Full:
                    continue
            step += 1

    def next(self, step: int):
        got, micro = self.queue.get()
        if got != step:
            raise RuntimeError(f"prefetcher is at step {got}, the loop at {step}")
        return micro

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def batch_tokens(samples: list[Sample], dev: torch.device):
    """idx (B, t) = prompt + target[:-1], targets (B, t) = the next byte where it is a target
    byte, -100 elsewhere (prompt, padding)."""
    seqs = [s.prompt + s.target for s in samples]
    t = max(len(q) for q in seqs) - 1
    idx = torch.full((len(samples), t), PAD, dtype=torch.long)
    tgt = torch.full((len(samples), t), -100, dtype=torch.long)
    for i, (s, q) in enumerate(zip(samples, seqs, strict=True)):
        idx[i, : len(q) - 1] = torch.tensor(q[:-1])
        start = len(s.prompt) - 1  # the position that predicts the first target byte
        tgt[i, start : len(q) - 1] = torch.tensor(q[len(s.prompt) :])
    return idx.to(dev), tgt.to(dev)


def sample_losses(
    model, pool, samples, dev, autocast, groups: Groups | None = None, aux=None, dropout=0.0
):
    """(B,) mean loss over each sample's target bytes, and the word-presence loss (or None).
    ``dropout``: the share of input bytes after the prompt replaced with PAD (input_dropout)."""
    groups = page_groups(pool, samples) if groups is None else groups
    idx, tgt = batch_tokens(samples, dev)
    if dropout > 0:
        # tgt marks the positions that predict a target byte; their input is the byte before,
        # the first of which is the prompt's last byte (kept).
        inputs = torch.zeros_like(tgt, dtype=torch.bool)
        inputs[:, 1:] = tgt[:, :-1] != -100  # inputs that are target bytes written so far
        drop = inputs & (torch.rand(idx.shape, device=idx.device) < dropout)
        idx = idx.masked_fill(drop, PAD)
    with autocast:  # bf16 on a GPU, for the encoder and the reader alike
        kv, mask, aux_loss = batch_memory(model, samples, groups, dev, aux)
        logits, _, _ = model(idx, model.memory(kv, mask=mask))
    per_byte = F.cross_entropy(
        logits.float().flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="none"
    ).view(tgt.shape)
    counts = (tgt != -100).sum(1).clamp(min=1)
    return per_byte.sum(1) / counts, aux_loss


# ---------------------------------------------------------------------------------------------
# Evaluation on the held-out pool
# ---------------------------------------------------------------------------------------------


def eval_sets(sampler: Sampler, cfg: dict[str, Any]) -> dict[str, list[Sample]]:
    """Fixed held-out samples: read-back at each vision tier trained, needles at tiny with the
    largest haystack, cross-document questions."""
    n, hay = cfg["eval_samples"], cfg["haystack"]
    sets: dict[str, list[Sample]] = {}
    final = 10**9  # curriculum finished: full read cut, largest haystack
    for tier in sampler.read_tiers:
        rng = random.Random(f"eval-read-{tier}")
        sets[f"read_{tier}"] = []
        for _ in range(n):
            s = sampler.sample(rng, final, "read")
            s.pages = [(s.pages[0][0], tier, False)]
            sets[f"read_{tier}"].append(s)
    rng = random.Random("eval-needle")
    sets[f"needle_tiny_{hay}"] = []
    for _ in range(n):
        s = sampler.sample(rng, final, "needle")
        s.pages = [(p, "tiny", False) for p, _, _ in s.pages]
        sets[f"needle_tiny_{hay}"].append(s)
    if sampler.cross_items:
        rng = random.Random("eval-cross")
        sets["cross"] = [sampler.sample(rng, final, "cross") for _ in range(n)]
    return sets


def char_precision(predicted: str, reference: str) -> float:
    """The eval's read-back precision (lab.metrics), 0 or 1 for an empty reference."""
    if not reference.strip():
        return float(not predicted.strip())
    return precision(predicted, reference)


@torch.no_grad()
def evaluate(model, pool, sets, cfg, dev, autocast) -> dict[str, Any]:
    model.eval()
    out: dict[str, Any] = {}
    bs = cfg["batch_size"]
    for name, samples in sets.items():
        losses = [
            sample_losses(model, pool, samples[i : i + bs], dev, autocast)[0]
            for i in range(0, len(samples), bs)
        ]
        out[f"loss_{name}"] = round(float(torch.cat(losses).mean()), 4)
        if name.startswith("read_"):
            # The same targets read from another page's memory: how much the memory is worth
            # (0 = the reader ignores it; the first CPU run's failure).
            wrong = [replace(s, pages=samples[(i + 1) % len(samples)].pages)
                     for i, s in enumerate(samples)]  # fmt: skip
            losses = [
                sample_losses(model, pool, wrong[i : i + bs], dev, autocast)[0]
                for i in range(0, len(wrong), bs)
            ]
            out[f"gain_{name}"] = round(float(torch.cat(losses).mean()) - out[f"loss_{name}"], 4)
    # Greedy generation, as the backend does it: read-back precision on the cut the model was
    # trained to write, exact answers for needles.
    k = cfg["eval_generate"]
    cut = min(cfg["read_bytes"], cfg["eval_read_bytes"])
    examples: list[dict[str, str]] = []
    for name, samples in sets.items():
        if k == 0:
            break
        scores = []
        for s in samples[:k]:
            kv, mask, _ = batch_memory(model, [s], page_groups(pool, [s]), dev)
            memory = model.memory(kv, mask=mask)
            limit = cut if s.task == "read" else 48
            ids, _ = model.generate(s.prompt, memory, limit)
            text = decode(ids)
            if s.task == "read":
                reference = decode(encode_text(s.answer)[:cut])
                scores.append(char_precision(text, reference))
            else:
                scores.append(float(text.strip() == s.answer))
            if len(examples) < 12 and len(scores) <= 2:
                examples.append({"set": name, "expected": s.answer[:cut], "got": text})
        key = "precision" if name.startswith("read") else "accuracy"
        out[f"{key}_{name}"] = round(sum(scores) / max(len(scores), 1), 4)
    out["examples"] = examples
    model.train()
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def tokenizer_facts() -> dict[str, Any]:
    return {"kind": "utf-8 bytes", "vocab_size": VOCAB_SIZE, "special_tokens": SPECIAL_TOKENS}


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    config,
    cfg,
    step,
    best,
    history,
    elapsed_s=0.0,
    aux=None,
    init=None,
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "aux": None if aux is None else aux.state_dict(),  # the word head, not shipped
            "config": config.to_dict(),
            "train_config": cfg,
            "step": step,
            "best_val": best,
            "history": history,
            "elapsed_s": elapsed_s,  # training wall time so far: the time-bounded schedule
            "init": init,  # {"path", "sha256", "step"} of the weights it started from, or None
            "data_version": DATA_VERSION,
            "tokenizer": tokenizer_facts(),
            "torch": torch.__version__,
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[ReferenceModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint: the config through from_dict (unknown keys dropped,
    new fields at their defaults); parameters this code added since keep their initialisation."""
    ckpt = torch.load(path, map_location=device, weights_only=False)
    tok = ckpt.get("tokenizer", tokenizer_facts())
    if tok.get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
        raise ValueError(f"{path}: vocabulary of {tok['vocab_size']}, this code has {VOCAB_SIZE}")
    config = ReferenceConfig.from_dict(ckpt["config"])
    model = ReferenceModel(config).to(device)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if unexpected:
        raise ValueError(f"{path}: parameters this code does not have: {sorted(unexpected)}")
    if missing:
        print(f"{path}: new parameters keep their initialisation: {sorted(missing)}")
    return model, ckpt


def export_weights(ckpt_path: Path, path: str | Path) -> str:
    model, ckpt = load_checkpoint(ckpt_path)
    meta = {
        "step": ckpt["step"],
        "data_version": ckpt.get("data_version", 0),
        "tokenizer": ckpt.get("tokenizer", tokenizer_facts()),
        "train_config": ckpt.get("train_config", {}).get("config", ""),
        "val": ckpt.get("best_val") or {},
    }
    if ckpt.get("init"):
        meta["init_from"] = ckpt["init"]
    digest = save_weights(model, model.config, path, meta)
    size = Path(path).stat().st_size
    print(f"exported step {ckpt['step']} to {path}: {size / 2**20:.1f} MiB, sha256 {digest}")
    return digest


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, cfg: dict[str, Any], elapsed: float = 0.0) -> float:
    """Linear warmup, then cosine down to min_lr at max_steps, or at max_time_s of training
    (``elapsed``) when that comes first: a wall-bounded run still ends its schedule."""
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    t = (step - cfg["warmup_steps"]) / max(cfg["max_steps"] - cfg["warmup_steps"], 1)
    if cfg["max_time_s"]:
        t = max(t, elapsed / cfg["max_time_s"])
    t = min(t, 1.0)
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * t)) * (cfg["lr"] - cfg["min_lr"])


def pool_spec(cfg: dict[str, Any], split: str) -> PoolSpec:
    prefix = "pool" if split == "train" else "heldout"
    target = target_range(cfg["pool_target_chars"], "--pool_target_chars")
    return PoolSpec(
        split=split,
        documents=cfg[f"{prefix}_documents"],
        needles=cfg[f"{prefix}_needles"],
        fillers=cfg[f"{prefix}_fillers"],
        cross_sets=cfg[f"{prefix}_cross"],
        max_pages=cfg["pool_max_pages"],
        target_chars=target,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(argv)
    out = Path(cfg["out_dir"])
    ckpt_path = out / "ckpt.pt"
    if cfg["export"]:
        export_weights(ckpt_path, cfg["export_path"])
        return {}
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(cfg["device"])
    if dev.type == "cpu":
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    autocast: Any = nullcontext()
    if dev.type == "cuda" and cfg["amp"] != "none":
        dtype = torch.bfloat16 if cfg["amp"] == "bf16" else torch.float16
        autocast = torch.autocast("cuda", dtype=dtype)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(out / "log.txt", "a") as f:
            f.write(line + "\n")

    tiers = tuple(
        sorted(set(weights(cfg["read_tiers"])) | set(weights(cfg["needle_tiers"]))
               | set(weights(cfg["haystack_tiers"])) | {"tiny"})
    )  # fmt: skip
    tiers = tuple(t for t in tiers if t != "text")  # the text tier reads pool.texts
    t0 = time.time()
    train_pool = build_pool(
        pool_spec(cfg, "train"), cfg["data_dir"], tiers, cfg["pool_workers"], log
    )
    held_pool = build_pool(
        pool_spec(cfg, "heldout"), cfg["data_dir"], tiers, cfg["pool_workers"], log
    )
    log(f"pools: {len(train_pool.texts)} train pages, {len(held_pool.texts)} held-out pages, "
        f"tiers {tiers}, {time.time() - t0:.0f} s")  # fmt: skip

    step, best, history = 0, None, []
    ckpt, elapsed_before = None, 0.0
    init = None  # the weights this run started from (init_from), carried into every export
    if cfg["resume"] and ckpt_path.is_file():
        model, ckpt = load_checkpoint(ckpt_path, str(dev))
        config = model.config
        step, best, history = ckpt["step"], ckpt.get("best_val"), ckpt.get("history", [])
        elapsed_before = ckpt.get("elapsed_s", 0.0)
        init = ckpt.get("init")
        log(f"resumed from {ckpt_path} at step {step}")
    elif cfg["init_from"]:
        model, config, meta = load_model(cfg["init_from"], str(dev))
        model.train()
        init = {"path": cfg["init_from"], "sha256": meta["sha256"], "step": meta.get("step")}
        log(f"initialised from {init}")
    else:
        config = ReferenceConfig.from_dict(json.loads(cfg["model"]))
        model = ReferenceModel(config).to(dev)
    aux = None
    if cfg["aux_word"] > 0:
        aux = torch.nn.Linear(config.d_model, cfg["aux_buckets"]).to(dev)
        if ckpt is not None and ckpt.get("aux") is not None:
            aux.load_state_dict(ckpt["aux"])
    named = list(model.named_parameters())
    named += [] if aux is None else [(f"aux.{n}", p) for n, p in aux.named_parameters()]
    decay = [p for n, p in named if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in named if p.dim() < 2 or "emb" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), fused=dev.type == "cuda",
    )  # fmt: skip
    if ckpt is not None and "optimizer" in ckpt:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:  # the parameters changed since: start the moments afresh
            log(f"optimizer state not restored ({exc})")
    log(f"model: {model.num_parameters() / 1e6:.2f}M parameters, config {config.to_dict()}")

    sampler = Sampler(train_pool, cfg)
    held = Sampler(held_pool, cfg)
    sets = eval_sets(held, cfg)
    model.train()
    stop_signal: list[str] = []  # SIGINT / SIGTERM: finish the step, checkpoint, evaluate, stop

    def request_stop(signum, frame) -> None:
        stop_signal.append(signal.Signals(signum).name)

    handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    prefetch = Prefetcher(sampler, cfg, step)
    started, start_step = time.time(), step

    def train_time() -> float:
        """Seconds of training so far, over every session of this run (pools not counted)."""
        return elapsed_before + time.time() - started

    last_ckpt = time.time()

    def checkpoint() -> None:
        """Save the run as it stands now (step, best and history are read at the call)."""
        nonlocal last_ckpt
        save_checkpoint(
            ckpt_path, model, optimizer, config, cfg, step, best, history, train_time(), aux, init
        )
        last_ckpt = time.time()

    window: dict[str, list[float]] = {}
    stop_reason = "max_steps"
    while step < cfg["max_steps"]:
        if step % cfg["eval_interval"] == 0 and (step > 0 or not cfg["resume"]):
            t = time.time()
            metrics = evaluate(model, held_pool, sets, cfg, dev, autocast)
            examples = metrics.pop("examples")
            metrics["step"] = step
            history.append(metrics)
            val = {k: v for k, v in metrics.items() if k.startswith("loss_")}
            if best is None or sum(val.values()) < sum(v for k, v in best.items() if k in val):
                best = {**val, "step": step}
            log(f"eval step {step} ({time.time() - t:.0f} s): {json.dumps(metrics)}")
            for ex in examples[:6]:
                log(f"  {ex['set']}: expected {ex['expected'][:80]!r} got {ex['got'][:80]!r}")
            checkpoint()

        lr_now = lr_at(step, cfg, train_time())
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        total = 0.0
        for samples, groups in prefetch.next(step):
            losses, aux_loss = sample_losses(
                model, train_pool, samples, dev, autocast, groups, aux, cfg["input_dropout"]
            )
            loss = losses.mean()
            if aux_loss is not None:
                loss = loss + cfg["aux_word"] * aux_loss
                window.setdefault("words", []).append(aux_loss.item())
            loss = loss / cfg["grad_accum"]
            loss.backward()
            total += loss.item()
            for s, value in zip(samples, losses.tolist(), strict=True):
                window.setdefault(s.task, []).append(value)
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % cfg["log_interval"] == 0:
            session = time.time() - started
            per_task = " ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in sorted(window.items()))
            cut, hay = sampler.curriculum(step)
            log(f"step {step} loss {total:.4f} ({per_task}) lr {lr_now:.2e} norm {norm:.2f} "
                f"cut {cut} hay {hay} {session / (step - start_step):.2f} s/step "
                f"elapsed {train_time():.0f} s")  # fmt: skip
            window = {}
        if time.time() - last_ckpt > cfg["ckpt_interval_s"]:
            checkpoint()
        if stop_signal:
            stop_reason = stop_signal[0]
            break
        if cfg["max_time_s"] and train_time() > cfg["max_time_s"]:
            stop_reason = f"max_time_s {cfg['max_time_s']:.0f}"
            break

    prefetch.close()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    metrics = evaluate(model, held_pool, sets, cfg, dev, autocast)
    examples = metrics.pop("examples")
    metrics["step"] = step
    history.append(metrics)
    log(f"final eval step {step}: {json.dumps(metrics)}")
    for ex in examples:
        log(f"  {ex['set']}: expected {ex['expected'][:120]!r} got {ex['got'][:120]!r}")
    best = {**{k: v for k, v in metrics.items() if k.startswith("loss_")}, "step": step}
    checkpoint()
    log(f"stopped at step {step} ({stop_reason}) after {time.time() - started:.0f} s")
    if cfg["export_at_end"]:
        export_weights(ckpt_path, cfg["export_path"])
    return {"step": step, "metrics": metrics, "history": history}


if __name__ == "__main__":
    main()
