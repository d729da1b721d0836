"""The extractor's trainer: its examples point at the answer, it trains, resumes, exports a
calibrated file the backend loads."""

from __future__ import annotations

import json
import random

from kb.model.reference.extractor import WEIGHTS, SpanExtractor
from lab import realtext
from lab import train_extractor as T


def test_examples_hold_their_answers_and_hard_negatives_do_not():
    cfg = {**T.DEFAULTS, "questions": 6, "negatives": 6}
    batch = T.examples(random.Random(0), "train", cfg)
    positives = [(q, w, s) for q, w, s in batch if s is not None]
    negatives = [(q, w, s) for q, w, s in batch if s is None]
    assert len(positives) == 6 and len(negatives) == 6
    for _, w, (a, b) in positives:
        assert 0 <= a < b <= len(w) and w[a:b].strip() == w[a:b]
    model = SpanExtractor()
    b = model.batch([q for q, _, _ in batch], [w for _, w, _ in batch])
    targets = T.token_targets(b, [s for _, _, s in batch])
    assert (targets[: len(positives)] > 0).all()  # each answer found among the window's tokens
    assert (targets[len(positives) :] == 0).all()  # [CLS]: no answer
    offsets = b["enc"]["offset_mapping"]
    for r, (_, w, (a, z)) in enumerate(positives):
        s, e = targets[r].tolist()
        assert w[int(offsets[r, s, 0]) : int(offsets[r, e, 1])] == w[a:z]


def test_shared_normalisation_brings_each_question_its_own_negatives_and_scores_them_together():
    import torch

    cfg = {**T.DEFAULTS, "questions": 4, "negatives": 2, "shared": 2, "people": 1.0}
    batch = T.examples(random.Random(1), "train", cfg)
    positives = [(q, w, s) for q, w, s in batch if s is not None]
    assert len(positives) == 4
    own = [(q, w) for q, w, s in batch[4 + 2 :]]
    assert own and all(s is None for _, _, s in batch[4 + 2 :])
    asked = {q for q, _, _ in positives}
    assert {q for q, _ in own} <= asked  # each shared negative is an answered question's
    for q, w in own:
        assert w not in {pw for pq, pw, _ in positives if pq == q}
    # the term: lower when the answering window's span outscores the other window's tokens
    two = [("q?", "alpha beta gamma", (6, 10)), ("q?", "delta epsilon", None)]
    context = torch.tensor([[False, True, True, True, False], [False, True, True, False, False]])
    target = torch.tensor([[2, 2], [0, 0]])
    logits = torch.zeros(2, 5, 2, requires_grad=True)
    flat = T.shared_loss(logits, context, target, two)
    assert abs(flat.item() - torch.log(torch.tensor(5.0)).item()) < 1e-5  # uniform over 5 tokens
    better = torch.zeros(2, 5, 2)
    better[0, 2] = 3.0
    assert T.shared_loss(better, context, target, two) < flat
    flat.backward()
    assert logits.grad is not None and logits.grad[1, 1:3].abs().sum() > 0  # the negative learns
    # a question without a second window, or without an answer, adds nothing
    assert T.shared_loss(logits, context[:1], target[:1], two[:1]).item() == 0.0


def test_smoke_run_trains_resumes_and_exports_a_loadable_file(tmp_path):
    out = tmp_path / "run"
    T.main(["--config", "smoke", "--out_dir", str(out)])
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 3
    T.main(["--config", "smoke", "--out_dir", str(out), "--resume", "--max_steps", "4"])
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4
    loaded = SpanExtractor(out / "extractor.safetensors")
    assert loaded.metadata["step"] == "4"
    assert json.loads(loaded.metadata["calibration"])["questions"] > 0


def test_a_new_run_goes_on_from_an_extractor_file(tmp_path):
    """--init FILE (here the shipped file by its path; "shipped" names the same file)."""
    shipped = SpanExtractor(WEIGHTS)
    step = int(shipped.metadata["step"])
    out = tmp_path / "run"
    T.main(
        ["--config", "smoke", "--out_dir", str(out), "--init", str(WEIGHTS)]
        + ["--max_steps", str(step + 1)]
    )
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == step and rows[0]["minutes"] == float(shipped.metadata["minutes"])
    assert rows[-1]["step"] == step + 1


def test_real_questions_ask_for_a_span_of_their_page_and_calibration_pages_are_held_out():
    train, held = T.real_pages("train"), T.real_pages("heldout")
    assert held and len(train) > 5 * len(held) and not set(train) & set(held)
    rng = random.Random(3)
    asked = [c for c in (realtext.cloze(rng, p) for p in train[:40]) if c is not None]
    assert len(asked) >= 20
    for c in asked:
        span = c.page[c.start : c.end]
        assert span and span not in c.question  # the question asks for it, does not state it
