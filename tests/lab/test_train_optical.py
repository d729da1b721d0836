"""The training loop on a tiny config: the loss goes down, checkpoints resume, exports load."""

from __future__ import annotations

import json
import random

import pytest
import torch

from kb.model.reference.backend import ReferenceBackend, load_model
from kb.model.reference.configuration_reference import ReferenceConfig
from kb.model.reference.processing_reference import (
    ASK,
    BOS,
    EOS,
    READ,
    SEP,
    encode_text,
    text_to_ids,
)
from lab import train_optical as train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


def smoke_args(run_dir, *extra: str) -> list[str]:
    return [
        "--config", "smoke",
        "--out_dir", str(run_dir / "run"),
        "--data_dir", str(run_dir / "synth"),
        "--pool_documents", "3", "--pool_needles", "3", "--pool_fillers", "1",
        "--pool_cross", "1", "--heldout_documents", "1", "--heldout_needles", "2",
        "--heldout_fillers", "1", "--heldout_cross", "1",
        "--eval_samples", "4", "--eval_generate", "1", "--log_interval", "4",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(run_dir):
    result = train.main(smoke_args(run_dir, "--max_steps", "16", "--eval_interval", "100"))
    return result


def test_smoke_training_lowers_the_held_out_loss_and_writes_a_checkpoint(trained, run_dir):
    first, last = trained["history"][0], trained["history"][-1]
    assert first["step"] == 0 and last["step"] == 16
    losses = [k for k in first if k.startswith("loss_")]
    assert {"loss_read_gist", "loss_read_tiny", "loss_needle_tiny_4", "loss_cross"} <= set(losses)
    assert sum(last[k] for k in losses) < sum(first[k] for k in losses) - 1.0
    ckpt = torch.load(run_dir / "run" / "ckpt.pt", weights_only=False)
    assert ckpt["format"] == train.CHECKPOINT_FORMAT and ckpt["step"] == 16
    assert ckpt["data_version"] == train.DATA_VERSION
    assert ckpt["tokenizer"]["vocab_size"] == 262 and ckpt["tokenizer"]["special_tokens"]["EOS"]
    assert ReferenceConfig.from_dict(ckpt["config"]).d_model == 64
    assert ckpt["train_config"]["config"] == "smoke" and "optimizer" in ckpt


def test_resume_continues_from_the_saved_step(trained, run_dir):
    result = train.main(smoke_args(run_dir, "--max_steps", "20", "--resume"))
    assert result["step"] == 20
    log = (run_dir / "run" / "log.txt").read_text()
    assert "resumed from" in log and "at step 16" in log
    assert "step 20 loss" in log and "step 4 loss" in log


def test_export_writes_weights_the_backend_loads_as_trained(trained, run_dir):
    path = run_dir / "reference.safetensors"
    train.main(smoke_args(run_dir, "--export", "--export_path", str(path)))
    model, config, meta = load_model(path)
    assert int(meta["step"]) >= 16 and json.loads(meta["data_version"]) == train.DATA_VERSION
    backend = ReferenceBackend(path)
    assert backend.trained is True and backend.config.d_model == 64


def test_init_from_shipped_weights_starts_where_they_ended(trained, run_dir, tmp_path):
    weights = tmp_path / "parent.safetensors"
    train.main(smoke_args(run_dir, "--export", "--export_path", str(weights)))
    _, _, parent = load_model(weights)
    history = torch.load(run_dir / "run" / "ckpt.pt", weights_only=False)["history"]
    args = smoke_args(run_dir, "--out_dir", str(tmp_path / "child"), "--init_from", str(weights))
    result = train.main([*args, "--max_steps", "4", "--eval_interval", "100"])
    # step 0 of the new run evaluates the parent's weights (fp16-rounded): its held-out losses
    # are the parent's last ones, far below those of a random initialisation
    first = result["history"][0]
    assert first["step"] == 0
    for key in ("loss_read_tiny", "loss_needle_tiny_4", "loss_cross"):
        assert first[key] == pytest.approx(history[-1][key], abs=0.05)
        assert first[key] < history[0][key] - 0.3
    ckpt = torch.load(tmp_path / "child" / "ckpt.pt", weights_only=False)
    assert ckpt["init"] == {
        "path": str(weights),
        "sha256": parent["sha256"],
        "step": parent["step"],
    }
    child = tmp_path / "child.safetensors"
    args = smoke_args(run_dir, "--out_dir", str(tmp_path / "child"))
    train.main([*args, "--export", "--export_path", str(child)])
    assert json.loads(load_model(child)[2]["init_from"])["sha256"] == parent["sha256"]


def test_old_checkpoints_keep_loading(trained, run_dir, tmp_path):
    ckpt = torch.load(run_dir / "run" / "ckpt.pt", weights_only=False)
    ckpt["config"]["a_field_from_the_future"] = 1  # dropped by from_dict
    del ckpt["config"]["repeat_min_span"]  # a field added since: takes its default
    for key in ("tokenizer", "history", "elapsed_s", "optimizer"):
        del ckpt[key]
    torch.save(ckpt, tmp_path / "old.pt")
    model, loaded = train.load_checkpoint(tmp_path / "old.pt")
    assert model.config.repeat_min_span == ReferenceConfig().repeat_min_span
    assert loaded["step"] >= 16


def test_samples_are_prompted_as_the_backend_prompts(run_dir, trained):
    cfg = train.parse_args(smoke_args(run_dir))
    pool = train.build_pool(train.pool_spec(cfg, "train"), cfg["data_dir"], ("gist", "tiny"), 1)
    sampler = train.Sampler(pool, cfg)
    rng = random.Random(0)
    read = sampler.sample(rng, 0, "read")
    assert read.prompt == [BOS, READ]
    text_ids = encode_text(pool.texts[read.pages[0][0]])
    cut = cfg["read_bytes"]
    assert read.target == (text_ids[:cut] if len(text_ids) > cut else text_ids + [EOS])
    needle = sampler.sample(rng, 10**6, "needle")
    assert needle.prompt[:2] == [BOS, ASK] and needle.prompt[-1] == SEP
    assert needle.target == encode_text(needle.answer) + [EOS]
    assert 1 <= len(needle.pages) <= cfg["haystack"]
    assert len({p for p, _, _ in needle.pages}) == len(needle.pages)
    idx, tgt = train.batch_tokens([read, needle], torch.device("cpu"))
    # only target bytes are scored, each predicted from the position before it
    assert (tgt[1] != -100).sum() == len(needle.target)
    start = len(needle.prompt) - 1
    assert tgt[1, start : start + len(needle.target)].tolist() == needle.target
    assert idx[1, : len(needle.prompt)].tolist() == needle.prompt


def test_lr_schedule_warms_up_then_decays_by_steps_or_time():
    cfg = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, max_time_s=0.0)
    assert train.lr_at(0, cfg) == pytest.approx(0.1)
    assert train.lr_at(10, cfg) == pytest.approx(1.0)
    assert train.lr_at(60, cfg) == pytest.approx(0.55)
    assert train.lr_at(110, cfg) == pytest.approx(0.1)
    timed = {**cfg, "max_time_s": 100.0}
    assert train.lr_at(20, timed, elapsed=100.0) == pytest.approx(0.1)


def test_char_precision():
    assert train.char_precision("hello", "hello") == 1.0
    assert train.char_precision("hellx", "hello") == pytest.approx(0.8)
    assert train.char_precision("", "abcd") == 0.0
    assert train.char_precision("abcdefgh", "abcd") == 0.0


def test_text_tier_pages_pack_as_the_backend_packs_them(run_dir, trained):
    """A text-tier page batched with a longer one gives the kv the backend computes alone."""
    cfg = train.parse_args(smoke_args(run_dir))
    pool = train.build_pool(train.pool_spec(cfg, "train"), cfg["data_dir"], ("gist", "tiny"), 1)
    model, _ = train.load_checkpoint(run_dir / "run" / "ckpt.pt")
    short, long = sorted(range(len(pool.texts)), key=lambda p: len(pool.texts[p]))[::-1][-1:-3:-1]
    a = train.Sample("read", [(short, "text", False), (long, "gist", False)], [], [])
    b = train.Sample("read", [(long, "text", False)], [], [])
    with torch.no_grad():
        kv, mask, _ = train.batch_memory(model, [a, b], train.page_groups(pool, [a, b]), "cpu")
        ids = text_to_ids(pool.texts[short])[None]
        alone = model.page_kv(model.encode_text(ids))[0]  # (L, 2, T, D), as ReferenceBackend
    T = alone.shape[2]
    assert torch.allclose(kv[0, :, :, :T], alone, atol=1e-5)
    assert mask[0].sum() == T + 16  # the text page, then the gist page's 16 tokens
    assert mask[1].sum() == len(text_to_ids(pool.texts[long])) // 4


def test_word_targets_put_each_word_in_its_cell(run_dir, trained):
    """The word-presence targets: one distribution per token, each word in the cell holding its
    box's centre, bucket 0 for cells without words."""
    cfg = train.parse_args(smoke_args(run_dir))
    pool = train.build_pool(train.pool_spec(cfg, "train"), cfg["data_dir"], ("gist", "tiny"), 1)
    page = max(range(len(pool.texts)), key=lambda p: len(pool.words[p]))
    words = pool.words[page]
    assert words and sorted(w for *_, w in words) == sorted(pool.texts[page].split())
    rows, cols, wts = train.word_targets(pool, [page, page], "tiny", 4096)
    g = 512 // 64
    assert torch.allclose(torch.zeros(2 * g * g).index_add_(0, rows, wts), torch.ones(2 * g * g))

    # tiny crops to the page's content square: each word where tiny's image puts it
    def cell_of(w) -> int:
        return min(g - 1, int((w[1] + w[3]) / 2 / 128)) * g + min(
            g - 1, int((w[0] + w[2]) / 2 / 128)
        )

    shown = pool.tier_words(page, "tiny")
    assert train.word_bucket(shown[0][4], 4096) in cols[rows == cell_of(shown[0])].tolist()
    empty = sorted(set(range(g * g)) - {cell_of(w) for w in shown})
    assert empty and cols[rows == empty[-1]].tolist() == [0]  # a cell without words
