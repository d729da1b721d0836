"""The text-tier trainer on a tiny config: it runs, its losses are finite, it resumes, exports."""

from __future__ import annotations

import json
import math
import random

import torch

from kb.model.reference.backend import ReferenceBackend
from kb.model.reference.modeling_reference import ReferenceModel
from lab import textdata
from lab import train as T
from tests.kb.model.reference.conftest import tiny_config


def test_memory_questions_target_every_answer_in_its_memory(model):
    cfg = T.parse_args(["--config", "smoke"])
    rng = random.Random(0)
    sample = textdata.memory_sample(rng, "train", 3, 6, 1, 400)
    assert sample.questions and any(q.page < 0 for q in sample.questions)
    for q in sample.questions:
        if q.page >= 0:
            data = sample.pages[q.page].encode()
            assert data[q.start : q.end].decode().split() == q.answer.split()
            assert sum(p.count(q.answer) for p in sample.pages) == 1
    span_loss, align_loss, count = T.memory_questions(model, sample, cfg, rng)
    assert count == len(sample.questions)
    assert span_loss.item() > 0 and align_loss.item() > 0 and span_loss.requires_grad
    reads = [textdata.read_sample(rng, "train", 1) for _ in range(2)]
    memory, idx, tgt, al, copy_to = T.read_batch(model, reads, cfg)
    assert (al[:, 2:] >= 0).any() and (tgt[:, 1:] != -100).any()
    # the read pointer's target is the memory byte each position writes
    assert memory.span_ids is not None
    for b in range(idx.shape[0]):
        for j in (copy_to[b] >= 0).nonzero().flatten().tolist():
            assert int(memory.span_ids[b, copy_to[b, j]]) == int(tgt[b, j])


def test_losses_are_finite_and_backpropagate():
    torch.manual_seed(0)
    model = ReferenceModel(tiny_config(copy_head=True))
    cfg = T.parse_args(["--config", "smoke"])
    loss, parts = T.losses(model, cfg, random.Random(1), minutes=0.0)
    assert math.isfinite(loss.item()) and parts["span"] > 0 and parts["align"] > 0
    loss.backward()
    assert model.span_query.weight.grad is not None
    assert parts["pointer"] > 0 and model.copy_query.weight.grad is not None
    assert model.text.wte.weight.grad is not None


def test_smoke_run_resumes_and_exports(tmp_path):
    out = tmp_path / "run"
    first = T.main(
        ["--config", "smoke", "--out_dir", str(out), "--max_steps", "3", "--max_minutes", "10"]
    )
    assert first["step"] == 3 and (out / "ckpt.pt").is_file()
    second = T.main(
        [
            "--config",
            "smoke",
            "--out_dir",
            str(out),
            "--resume",
            "--max_steps",
            "5",
            "--max_minutes",
            "10",
        ]
    )
    assert second["step"] == 5
    assert len(second["history"]) > len(first["history"])
    T.main(["--out_dir", str(out), "--export"])
    backend = ReferenceBackend(out / "reference.safetensors")
    assert backend.config.span_head and backend.config.text_encoder == "slots"
    assert backend.config.copy_head  # the read pointer travels in the exported file
    meta = backend.metadata
    assert int(meta["step"]) == second["step"] and json.loads(meta["eval"])
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    assert ckpt["format"] == T.CHECKPOINT_FORMAT
