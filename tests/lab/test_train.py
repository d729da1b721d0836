"""The text-tier trainer on a tiny config: it runs, its losses are finite, it resumes, exports."""

from __future__ import annotations

import json
import math
import random

import torch

from kb.model.reference.backend import ReferenceBackend
from lab import textdata
from lab import train as T


def test_batches_align_every_target_with_its_memory(model):
    cfg = T.parse_args(["--config", "smoke"])
    rng = random.Random(0)
    asks = [textdata.ask_sample(rng, "train", 3, 0.0, 400) for _ in range(2)]
    memory, idx, al, last, starts, ends, lex = T.ask_batch(model, asks, cfg, rng)
    assert lex.shape == memory.span_mask.shape and (lex >= 0).all()
    k = model.config.text_bytes_per_token
    for b, s in enumerate(asks):
        # the start target is the answer's first byte in the sample's concatenated pages
        blob = b"".join(p.encode() + b"\0" * (-len(p.encode()) % k or 0) for p in s.pages)
        offsets = [0]
        for p in s.pages:
            n = len(p.encode())
            offsets.append(offsets[-1] + max(k, -(-n // k) * k))
        assert int(starts[b]) == offsets[s.page] + s.start
        assert int(ends[b]) == offsets[s.page] + s.end - 1
        assert bool(memory.span_mask[b, starts[b]]) and bool(memory.span_mask[b, ends[b]])
        assert int(al[b, last[b]]) == (offsets[s.page] + s.start) // k
        assert blob  # the pages are there
    reads = [textdata.read_sample(rng, "train", 1) for _ in range(2)]
    memory, idx, tgt, al = T.read_batch(model, reads, cfg)
    assert (al[:, 2:] >= 0).any() and (tgt[:, 1:] != -100).any()


def test_losses_are_finite_and_backpropagate(model):
    cfg = T.parse_args(["--config", "smoke"])
    loss, parts = T.losses(model, cfg, random.Random(1), minutes=0.0)
    assert math.isfinite(loss.item()) and parts["span"] > 0 and parts["align"] > 0
    loss.backward()
    assert model.span_query.weight.grad is not None
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
    meta = backend.metadata
    assert int(meta["step"]) == second["step"] and json.loads(meta["eval"])
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    assert ckpt["format"] == T.CHECKPOINT_FORMAT
