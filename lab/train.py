"""Train the reference model to read its text tier: read-back and answers copied from memory.

    python -m lab.train --max_minutes 90   # from the shipped weights (run it in the background)
    python -m lab.train --resume           # go on from out_dir/ckpt.pt (another session)
    python -m lab.train --export           # out_dir/ckpt.pt -> out_dir/reference.safetensors
    python -m lab.train --config smoke     # the whole loop on a tiny model, seconds

Flat and resumable, after nanoGPT. Every default below can be overridden (``--lr 3e-4``).

Two tasks, each prompted exactly as the backend prompts (processing_reference), over a memory of
text-tier pages packed as ``ReferenceModel.pack`` packs them, drawn fresh every step
(lab.textdata: no pool to memorise):
  read  BOS READ -> the page's bytes. Byte loss, plus the alignment loss: head 0 of every reader
        layer is pulled to memory token floor(j / 4) of that page when it writes byte j
        (reading-on-a-cpu.md section 2: 0% -> 72% read-back in 20 CPU-minutes).
  ask   BOS ASK question SEP over a memory of 1..haystack pages: every fact the pages state with
        an answer found once in the memory (up to ``questions``), worded as people ask
        (textdata.paraphrase), and ``absent`` questions about pages not in the memory. The memory
        is encoded once for all of them. The copy path (SpanKeys) is trained with cross-entropy
        on the answer's start and end byte among every byte of the memory, or on "no answer",
        with the lexical bias added as at inference; the alignment loss pulls head 0 at SEP to
        the answer's token. (One question per memory gave 8 span examples a step, too few: the
        copy path stayed at chance for 200 steps.)

The vision encoder and the reader start from the shipped weights (``init_from``); the slot text
encoder and the span head are new. The optical tiers are lab/train_optical.py's.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kb.embed import lexical_bias, lexical_scores_of_sets, segment_index
from kb.model.reference.backend import DEFAULT_WEIGHTS, load_model, save_weights
from kb.model.reference.configuration_reference import ReferenceConfig
from kb.model.reference.modeling_reference import ReferenceModel
from kb.model.reference.processing_reference import (
    ASK,
    BOS,
    EOS,
    PAD,
    READ,
    SEP,
    VOCAB_SIZE,
    decode,
    encode_text,
    text_to_ids,
)
from lab import textdata
from lab.config import parse_config
from lab.metrics import precision

CHECKPOINT_FORMAT = "kb-reference-text-ckpt/1"

# --- defaults ---
_before = set(globals())
out_dir = "data/train/text"
init_from = str(DEFAULT_WEIGHTS)  # "" = random initialisation
# ReferenceConfig overrides of the init's config
model = (
    '{"text_encoder": "slots", "text_layers": 2, "span_head": true, "span_lexical": 4.0, '
    '"copy_head": true, "copy_offsets": 8}'
)
threads = 2
seed = 1337
batch_read = 6  # read-back samples per step
batch_ask = 4  # memories per step, each asked every fact it states (up to ``questions``)
questions = 12  # questions per memory: the memory is encoded once, the reader is cheap
absent = 2  # questions per memory whose answer no page holds
read_bytes = 320  # read-back targets: the first read_bytes of a page (positions generalise on)
read_distractors = 0  # other pages in a read-back's memory (0..this): the READ prompt cannot say
# which page to read, so a distractor makes the target a guess (the pointer did not learn with 1)
haystack = 8  # pages per question, log-uniform 1..haystack (the eval goes to 1,000): a start
# or end key depends on its own page alone, so more pages only add competitors, which the pages
# here already bring (every page states facts of the same kinds)
haystack_start = 2
curriculum_minutes = 20.0
page_bytes = 1600  # training pages are cut here (compute); eval pages are whole
grad_pages = 3  # pages per question encoded with gradient (the answer's page always is)
align = 1.0  # weight of the alignment loss
span = 1.0  # weight of the copy path's loss
pointer = 1.0  # weight of the read pointer's loss (config copy_head)
lr = 1e-3
min_lr = 1e-4
warmup_steps = 50
weight_decay = 0.01
grad_clip = 1.0
max_minutes = 90.0  # the schedule is time-bounded: a CPU run of a session
max_steps = 0  # stop after this many steps as well (0 = no limit): tests
eval_minutes = 6.0
eval_asks = 48
eval_reads = 12
checkpoint_minutes = 5.0
resume = False
export = False
config = ""
CONFIG_KEYS = [k for k in list(globals()) if k not in _before and not k.startswith("_")]

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        init_from="",
        model=json.dumps(
            dict(enc_conv_dim=8, enc_conv_blocks=1, enc_layers=1, d_model=32, n_heads=2,
                 mlp_ratio=2, n_layers=2, text_layers=1, span_dim=8, copy_head=True, copy_offsets=4)
        ),
        batch_read=2, batch_ask=2, questions=4, read_bytes=32, haystack=3, haystack_start=2,
        page_bytes=400,
        max_minutes=0.15, eval_minutes=0.1, eval_asks=4, eval_reads=2, checkpoint_minutes=0.05,
    ),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the preset, then explicit flags (lab.config)."""
    defaults = {k: globals()[k] for k in CONFIG_KEYS}
    return parse_config(defaults, PRESETS, argv, __doc__.split("\n")[0])


# --- batches ---------------------------------------------------------------------------------


def encode_pages(model: ReferenceModel, texts: list[str], grad: bool):
    """Text pages -> per page (kv (L, 2, T, D), span keys (K, 4T, Ds), real-byte mask (4T,),
    byte ids (4T,))."""
    if not texts:
        return []
    k = model.config.text_bytes_per_token
    ids = [text_to_ids(t, k) for t in texts]
    n = max(len(i) for i in ids)
    batch = torch.full((len(ids), n), PAD, dtype=torch.long)
    for row, i in enumerate(ids):
        batch[row, : len(i)] = i
    tmask = (batch.view(len(ids), n // k, k) != PAD).any(-1)  # (N, T) real tokens
    tmask[:, 0] = True  # an empty page still has its one token
    with torch.set_grad_enabled(grad):
        tokens = model.encode_text(batch, tmask)  # (N, T, D)
        kv = model.page_kv(tokens, tmask)  # (N, L, 2, T, D)
        spans = model.page_span(tokens, batch)  # (N, K, 4T, Ds)
    out = []
    for row, i in enumerate(ids):
        T = len(i) // k
        real = batch[row, : len(i)] != PAD
        out.append((kv[row, :, :, :T], spans[row, :, : len(i)], real, batch[row, : len(i)]))
    return out


def memory_of(model: ReferenceModel, per_sample: list[list[tuple]]):
    """Each sample's pages (encode_pages' triples) -> one padded Memory of the batch, with the
    token and byte offset of every page in its sample's memory.

    Built with cat and stack, never by assigning into a preallocated tensor: the backward of
    each slice assignment would clone the gradient of the whole (B, L, 2, M, D) memory, once per
    page encoded with gradient (it was 3/4 of a step's time)."""
    lengths = [sum(p[0].shape[2] for p in pages) for pages in per_sample]
    blens = [sum(p[1].shape[1] for p in pages) for pages in per_sample]
    M, P = max(lengths), max(blens)
    kvs, spans, masks, smasks, sids, tok_off, byte_off = [], [], [], [], [], [], []
    for pages, m, n in zip(per_sample, lengths, blens, strict=True):
        kv = torch.cat([p[0] for p in pages], dim=2)  # (L, 2, m, D)
        span = torch.cat([p[1] for p in pages], dim=1)  # (2, n, Ds)
        kvs.append(F.pad(kv, (0, 0, 0, M - m)))
        spans.append(F.pad(span, (0, 0, 0, P - n)))
        masks.append(torch.arange(M) < m)
        smasks.append(F.pad(torch.cat([p[2] for p in pages]), (0, P - n)))
        sids.append(F.pad(torch.cat([p[3] for p in pages]), (0, P - n), value=PAD))
        offsets = torch.tensor([0] + [p[0].shape[2] for p in pages]).cumsum(0)
        tok_off.append(offsets.tolist())
        offsets = torch.tensor([0] + [p[1].shape[1] for p in pages]).cumsum(0)
        byte_off.append(offsets.tolist())
    memory = model.memory(torch.stack(kvs), [M], torch.stack(masks))
    memory.span, memory.span_mask = torch.stack(spans), torch.stack(smasks)
    memory.span_ids = torch.stack(sids)
    return memory, tok_off, byte_off


def read_batch(model, samples: list[textdata.Sample], cfg):
    per_sample = []
    for s in samples:
        texts = [t.encode()[: cfg["page_bytes"]].decode("utf-8", "ignore") for t in s.pages]
        s.pages = texts
        enc = encode_pages(model, [texts[s.page]], grad=True)
        others = encode_pages(model, [t for i, t in enumerate(texts) if i != s.page], grad=False)
        others.insert(s.page, enc[0])
        per_sample.append(others)
    memory, tok_off, byte_off = memory_of(model, per_sample)
    R = cfg["read_bytes"]
    rows, tgts, aligns, copies = [], [], [], []
    for b, s in enumerate(samples):
        body = encode_text(s.pages[s.page])[:R]
        ids = [BOS, READ, *body]
        tgt = [-100, *body, EOS] if len(body) < R else [-100, *body[: len(body)]]
        tgt = tgt[: len(ids)]
        al = [-1] + [
            tok_off[b][s.page] + j // model.config.text_bytes_per_token for j in range(len(body))
        ]
        al = al[: len(ids)]
        # the read pointer's target: the memory byte that position j + 1 writes
        copies.append(([-1] + [byte_off[b][s.page] + j for j in range(len(body))])[: len(ids)])
        rows.append(ids)
        tgts.append(tgt)
        aligns.append(al)
    idx, tgt, al = pad_rows(rows, tgts, aligns)
    _, _, copy_to = pad_rows(rows, tgts, copies)
    return memory, idx, tgt, al, copy_to


def pad_rows(rows, tgts, aligns):
    t = max(len(r) for r in rows)
    idx = torch.full((len(rows), t), PAD, dtype=torch.long)
    tgt = torch.full((len(rows), t), -100, dtype=torch.long)
    al = torch.full((len(rows), t), -1, dtype=torch.long)
    for b, (r, g, a) in enumerate(zip(rows, tgts, aligns, strict=True)):
        idx[b, : len(r)], tgt[b, : len(g)], al[b, : len(a)] = (
            torch.tensor(r),
            torch.tensor(g),
            torch.tensor(a),
        )
    return idx, tgt, al


def memory_questions(model, sample: textdata.MemorySample, cfg, rng: random.Random):
    """One memory, many questions: the copy path's loss (start and end cross-entropy, the
    lexical bias added as at inference) and the alignment loss at each question's SEP, summed,
    with the number of questions."""
    k = model.config.text_bytes_per_token
    holders = [q.page for q in sample.questions if q.page >= 0]
    order = sorted(range(len(sample.pages)), key=lambda i: -holders.count(i))
    grad = set(order[: cfg["grad_pages"]])
    enc_g = encode_pages(model, [sample.pages[i] for i in order if i in grad], grad=True)
    enc_n = encode_pages(model, [sample.pages[i] for i in order if i not in grad], grad=False)
    enc = dict(zip(order, enc_g + enc_n, strict=True))
    memory, tok_off, byte_off = memory_of(model, [[enc[i] for i in range(len(sample.pages))]])
    P = memory.span.shape[2]
    rows, last, starts, ends, aligns = [], [], [], [], []
    for q in sample.questions:
        ids = [BOS, ASK, *encode_text(q.question), SEP]
        al = [-1] * len(ids)
        if q.page >= 0:
            starts.append(byte_off[0][q.page] + q.start)
            ends.append(byte_off[0][q.page] + q.end - 1)
            al[-1] = tok_off[0][q.page] + q.start // k
        else:
            starts.append(P)  # "no answer"
            ends.append(P)
        rows.append(ids)
        last.append(len(ids) - 1)
        aligns.append(al)
    idx, _, al = pad_rows(rows, [[-100]] * len(rows), aligns)
    Q = len(rows)
    model(idx, memory, align=al)  # Q rows over one memory (CrossAttention shares it)
    align_loss = model.align_loss * Q
    h = model.last_hidden[torch.arange(Q), torch.tensor(last)]  # (Q, D)
    logits = model.span_logits(h, memory)  # (Q, 2, P + 1)
    lengths = [len(text_to_ids(t, k)) for t in sample.pages]
    index, sets = segment_index(sample.pages, lengths)
    lex = torch.stack(
        [
            torch.cat([lexical_scores_of_sets(q.question, sets), torch.zeros(1)])[index]
            for q in sample.questions
        ]
    )  # (Q, P)
    lex = model.config.span_lexical * lex
    logits = torch.cat([logits[:, :, :-1] + lex[:, None, :], logits[:, :, -1:]], dim=-1)
    span_loss = F.cross_entropy(logits[:, 0], torch.tensor(starts), reduction="sum")
    span_loss = span_loss + F.cross_entropy(logits[:, 1], torch.tensor(ends), reduction="sum")
    return span_loss, align_loss, Q


def haystack_at(cfg, minutes: float) -> int:
    frac = min(1.0, minutes / max(cfg["curriculum_minutes"], 1e-9))
    return round(cfg["haystack_start"] + frac * (cfg["haystack"] - cfg["haystack_start"]))


def draw_n(rng: random.Random, n_max: int) -> int:
    return max(1, min(n_max, int(math.exp(rng.uniform(0, math.log(n_max + 1))))))


def losses(model, cfg, rng, minutes: float):
    reads = [
        textdata.read_sample(rng, "train", rng.randint(0, cfg["read_distractors"]))
        for _ in range(cfg["batch_read"])
    ]
    n_max = haystack_at(cfg, minutes)
    memories = [
        textdata.memory_sample(
            rng, "train", draw_n(rng, n_max), cfg["questions"], cfg["absent"], cfg["page_bytes"]
        )
        for _ in range(cfg["batch_ask"])
    ]
    memory, idx, tgt, al, copy_to = read_batch(model, reads, cfg)
    _, read_loss, _ = model(idx, memory, targets=tgt, align=al, copy_to=copy_to)
    read_align = model.align_loss
    pointer = model.copy_loss if model.config.copy_head else read_loss.new_zeros(())
    span_sum, align_sum, count = idx.new_zeros((), dtype=torch.float), 0.0, 0
    for sample in memories:
        if not sample.questions:
            continue
        s_loss, a_loss, q = memory_questions(model, sample, cfg, rng)
        span_sum, align_sum, count = span_sum + s_loss, align_sum + a_loss, count + q
    span_loss = span_sum / max(count, 1)
    ask_align = align_sum / max(count, 1)
    total = read_loss + cfg["span"] * span_loss + cfg["align"] * (read_align + ask_align)
    total = total + cfg["pointer"] * pointer
    parts = {"read": read_loss, "span": span_loss, "align": read_align + ask_align,
             "pointer": pointer}  # fmt: skip
    out = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}
    return total, out | {"haystack": n_max, "questions": count}


# --- evaluation during training (lab.eval measures the product) --------------------------------


@torch.no_grad()
def quick_eval(model: ReferenceModel, cfg) -> dict[str, float]:
    model.eval()
    rng = random.Random("kb-text-eval")
    prec = []
    for _ in range(cfg["eval_reads"]):
        s = textdata.read_sample(rng, "heldout", 0)
        kv, *span = encode_pages(model, s.pages, grad=False)[0]
        memory = model.pack([kv], [tuple(span)])
        n = min(len(s.pages[0].encode()), cfg["read_bytes"])
        ids, _ = model.generate([BOS, READ], memory, n)
        ref = s.pages[0].encode()[:n].decode("utf-8", "ignore")
        prec.append(precision(decode(ids)[: len(ref)], ref) if ref.strip() else 0.0)
    right = cited = absent_ok = absent = 0
    for _ in range(cfg["eval_asks"]):
        s = textdata.ask_sample(rng, "heldout", cfg["haystack"], 0.15)
        enc = encode_pages(model, s.pages, grad=False)
        memory = model.pack([e[0] for e in enc], [e[1:] for e in enc])
        prompt = [BOS, ASK, *encode_text(s.question), SEP]
        lengths = [len(text_to_ids(t)) for t in s.pages]
        lex = model.config.span_lexical * lexical_bias(s.question, s.pages, lengths)
        got, _, scores = model.best_span(prompt, memory, bias=lex)
        text = ""
        page = -1
        if got is not None:
            # the memory's text bytes: every page padded to whole tokens, as packed
            blob = b"".join(bytes(min(x, 255) for x in text_to_ids(p).tolist()) for p in s.pages)
            text = blob[got[0] : got[1] + 1].decode("utf-8", "replace")
            assert memory.span_page is not None
            page = int(memory.span_page[got[0]])
        if s.page < 0:
            absent += 1
            absent_ok += got is None
        else:
            right += text.strip() == s.answer.strip()
            cited += page == s.page
    model.train()
    n_present = max(1, cfg["eval_asks"] - absent)
    return {"readback": sum(prec) / len(prec), "answer": right / n_present,
            "cited": cited / n_present, "absent_ok": absent_ok / max(1, absent)}  # fmt: skip


# --- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(path: Path, model, optimizer, cfg, step, elapsed, history, init) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "config": model.config.to_dict(),
                "train_config": cfg, "step": step, "elapsed_s": elapsed, "history": history,
                "init": init, "data_version": textdata.TEXT_DATA_VERSION,
                "vocab_size": VOCAB_SIZE, "torch": torch.__version__}, tmp)  # fmt: skip
    os.replace(tmp, path)


def build_model(cfg) -> tuple[ReferenceModel, dict | None]:
    overrides = json.loads(cfg["model"])
    if cfg["init_from"]:
        base, base_config, meta = load_model(cfg["init_from"])
        config = ReferenceConfig.from_dict({**base_config.to_dict(), **overrides})
        model = ReferenceModel(config)
        own = model.state_dict()
        keep = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(keep, strict=False)
        init = {"path": cfg["init_from"], "sha256": meta["sha256"], "step": meta.get("step")}
        print(f"init from {cfg['init_from']}: {len(keep)} of {len(own)} tensors")
        return model, init
    torch.manual_seed(cfg["seed"])
    return ReferenceModel(ReferenceConfig(**overrides)), None


def lr_at(cfg, step: int, minutes: float) -> float:
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    frac = min(1.0, minutes / cfg["max_minutes"])
    return cfg["min_lr"] + 0.5 * (cfg["lr"] - cfg["min_lr"]) * (1 + math.cos(math.pi * frac))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(argv)
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    torch.set_num_threads(cfg["threads"])
    if cfg["export"]:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        config = ReferenceConfig.from_dict(ckpt["config"])
        model = ReferenceModel(config)
        model.load_state_dict(ckpt["model"])
        meta = {"step": ckpt["step"], "train": "lab.train (text tier)",
                "minutes": round(ckpt["elapsed_s"] / 60, 1), "init_from": ckpt.get("init") or {},
                "eval": ckpt["history"][-1] if ckpt["history"] else {}}  # fmt: skip
        digest = save_weights(model, config, out / "reference.safetensors", meta)
        print(f"exported step {ckpt['step']} to {out / 'reference.safetensors'}: sha256 {digest}")
        return {"sha256": digest}
    history: list[dict] = []
    if cfg["resume"] and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model = ReferenceModel(ReferenceConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["model"])
        step, elapsed, history, init = (
            ckpt["step"],
            ckpt["elapsed_s"],
            ckpt["history"],
            ckpt["init"],
        )
        print(f"resumed {ckpt_path} at step {step}, {elapsed / 60:.1f} min")
    else:
        model, init = build_model(cfg)
        step, elapsed, ckpt = 0, 0.0, None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
    )
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    model.train()
    rng = random.Random(f"{cfg['seed']}/{step}")
    log_path = out / "log.jsonl"
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    t_start = time.time() - elapsed
    last_eval = last_ckpt = elapsed / 60
    if not history:
        history.append({"step": step, "minutes": round(elapsed / 60, 2), **quick_eval(model, cfg)})
        print(json.dumps(history[-1]), flush=True)
    while not stop["now"]:
        minutes = (time.time() - t_start) / 60
        if minutes >= cfg["max_minutes"] or (cfg["max_steps"] and step >= cfg["max_steps"]):
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step, minutes)
        loss, parts = losses(model, cfg, rng, minutes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        step += 1
        if step % 10 == 0:
            rec = {"step": step, "minutes": round(minutes, 2), "loss": round(float(loss), 4)}
            rec |= {k: round(v, 4) if isinstance(v, float) else v for k, v in parts.items()}
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
        if minutes - last_eval >= cfg["eval_minutes"]:
            last_eval = minutes
            history.append({"step": step, "minutes": round(minutes, 2), **quick_eval(model, cfg)})
            print(json.dumps(history[-1]), flush=True)
        if minutes - last_ckpt >= cfg["checkpoint_minutes"]:
            last_ckpt = minutes
            save_checkpoint(
                ckpt_path, model, optimizer, cfg, step, time.time() - t_start, history, init
            )
    minutes = (time.time() - t_start) / 60
    history.append({"step": step, "minutes": round(minutes, 2), **quick_eval(model, cfg)})
    print(json.dumps(history[-1]), flush=True)
    save_checkpoint(ckpt_path, model, optimizer, cfg, step, time.time() - t_start, history, init)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return {"step": step, "history": history}


if __name__ == "__main__":
    main()
