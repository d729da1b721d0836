"""The row reader (lab/train_rows.py): its targets, its sequence layout, decoding, and the loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ingest.tiers import CANONICAL
from kb.model.reference.backend import load_model, random_model, save_weights
from kb.model.reference.configuration_reference import ReferenceConfig
from kb.model.reference.processing_reference import GUTTER, assemble
from lab import train_rows
from lab.config import target_range
from lab.train_rows import RowReader, cell_targets, lines_of, row_targets


def test_words_make_lines_and_lines_make_rows():
    cell = CANONICAL.size / 4  # a 4 x 4 grid
    words = [
        (300, 10, 360, 24, "world"),  # first line, given out of order
        (10, 12, 80, 26, "Hello"),
        (10, 40, 90, 54, "second"),  # another line in the same row of cells
        (10, 2 * cell + 5, 70, 2 * cell + 19, "third"),  # the third row
    ]
    assert [t for _, t in lines_of(words)] == ["Hello world", "second", "third"]
    assert row_targets(words, 4) == ["Hello world second", "", "third", ""]


def test_cells_hold_their_own_characters_and_put_the_page_back_together():
    cell = CANONICAL.size / 4  # a 4 x 4 grid
    words = [
        (300, 10, 360, 24, "world"),
        (10, 12, 80, 26, "Hello"),
        (10, 40, 90, 54, "second"),  # a second line in the same row of cells
        (10, 2 * cell + 5, 70, 2 * cell + 19, "third"),
        (200, 2 * cell + 5, 300, 2 * cell + 19, "crossing"),  # "cros" in cell 0, "sing" in 1
    ]
    cells = cell_targets(words, 4)
    assert cells[0] == "Hello \nsecond" and cells[1] == "world\n"  # every cell of row 0: 2 lines
    assert cells[2] == cells[3] == "\n" and cells[4:8] == ["", "", "", ""]
    assert cells[8] + cells[9] == "third crossing" and cells[8].endswith(" cros")
    truth = " ".join(t for t in row_targets(words, 4) if t)
    assert assemble(cells, 4) == truth == "Hello world second third crossing"


def test_a_row_is_read_strip_by_strip_then_cell_by_cell():
    torch.manual_seed(0)
    reader = RowReader(d_model=8, strips=2, slots=3, hidden=4).eval()
    reader.mix.weight.data.zero_()  # no mixing: each position depends on its own token only
    reader.mix.bias.data.zero_()
    tokens = torch.randn(1, 9, 8)  # a 3 x 3 grid
    base = reader(tokens)  # (T = 2 * 3 * 3, 3 rows, 256)
    assert base.shape == (18, 3, 256)
    changed = tokens.clone()
    changed[0, 1 * 3 + 2] += 1.0  # row 1, cell 2
    moved = (reader(changed) - base).abs().sum(-1) > 1e-6  # (T, rows)
    assert not moved[:, 0].any() and not moved[:, 2].any()
    # positions (strip s, cell 2, slots 0-2) = s * 9 + 6 .. s * 9 + 8, in both strips
    assert moved[:, 1].nonzero().flatten().tolist() == [6, 7, 8, 15, 16, 17]


def test_the_loop_logs_checkpoints_and_resumes(tmp_path: Path):
    argv = ["--config", "smoke", "--out_dir", str(tmp_path / "run"), "--cache_dir",
            str(tmp_path / "pool")]  # fmt: skip
    first = train_rows.main(argv)
    assert first["step"] == 3 and 0.0 <= first["precision"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "precision" in rows[0]
    assert all(r["loss"] > 0 for r in rows if "loss" in r)
    again = train_rows.main([*argv, "--resume", "--max_steps", "5"])
    assert again["step"] == 5
    # a later session: the fp16 file --export writes, and a new run from it
    saved = tmp_path / "rows.safetensors"
    assert train_rows.main([*argv, "--export", str(saved)])["step"] == 5
    other = ["--config", "smoke", "--out_dir", str(tmp_path / "next"), "--cache_dir",
             str(tmp_path / "pool")]  # fmt: skip
    later = train_rows.main([*other, "--init", str(saved), "--max_steps", "6"])
    assert later["step"] == 6
    first_row = json.loads((tmp_path / "next" / "log.jsonl").read_text().splitlines()[0])
    assert first_row["step"] == 5 and first_row["precision"] == pytest.approx(again["precision"])


def test_the_cell_layout_trains_a_fresh_encoder(tmp_path: Path):
    argv = ["--config", "smoke", "--layout", "cell", "--strips", "1", "--slots", "8",
            "--out_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "pool")]  # fmt: skip
    first = train_rows.main(argv)
    assert first["step"] == 3 and 0.0 <= first["precision"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 0 for r in rows if "loss" in r)
    # reference weights with this encoder and its cell reader
    base = tmp_path / "base.safetensors"
    tiny = ReferenceConfig(**train_rows.TINY)
    save_weights(random_model(tiny, seed=5), tiny, base, {"step": 42})
    shipped = tmp_path / "reference.safetensors"
    out = train_rows.main([*argv, "--ship", str(shipped), "--base", str(base)])
    assert out["step"] == 3 and out["shipped"] == str(shipped)
    model, config, meta = load_model(shipped)
    assert config.cell_slots == 8 and json.loads(meta["cell_reader"])["step"] == 3
    assert meta["step"] == "42" and meta["base"]  # the base's step: trained weights stay so
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    stem = "stem.0.weight"
    assert torch.equal(model.vision.state_dict()[stem], ckpt["encoder"][stem].half().float())
    before, _, _ = load_model(base)
    assert torch.equal(model.text.wte.weight, before.text.wte.weight)  # the text tier as it was
    with torch.no_grad():
        cells = model.read_cells(model.encode_images(torch.rand(1, 1, 256, 256), "gist"))
    assert len(cells[0]) == 16
    cropped = train_rows.main([*argv, "--crop", "2", "--out_dir", str(tmp_path / "crop")])
    assert cropped["step"] == 3 and 0.0 <= cropped["precision"] <= 1.0
    with pytest.raises(SystemExit):
        train_rows.main([*argv, "--layout", "diagonal"])
    with pytest.raises(SystemExit, match="--crop needs --layout cell"):
        train_rows.main([*argv, "--layout", "row", "--crop", "2"])


def test_several_tiers_are_mixed_and_each_is_measured(tmp_path: Path):
    argv = ["--config", "smoke", "--layout", "cell", "--strips", "1", "--slots", "8", "--crop",
            "2", "--tier", "gist,tiny", "--tier_weights", "1,3", "--max_steps", "8",
            "--out_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "pool")]  # fmt: skip
    final = train_rows.main(argv)
    assert 0.0 <= final["precision"] <= 1.0 and 0.0 <= final["precision_tiny"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {r["tier"] for r in rows if "loss" in r} <= {"gist", "tiny"}
    with pytest.raises(SystemExit, match="one per tier"):
        train_rows.main([*argv, "--tier_weights", "1"])
    with pytest.raises(ValueError, match="unknown tier 'huge'"):
        train_rows.main([*argv, "--tier", "base,huge"])


def test_the_cosine_schedule_warms_up_then_falls_to_its_floor():
    cfg = {**train_rows.DEFAULTS, "schedule": "cosine", "warmup": 10, "min_lr": 0.1}
    assert train_rows.schedule(cfg, 0, 0.0) == pytest.approx(0.1)  # warmup: 1/10
    assert train_rows.schedule(cfg, 100, 0.0) == pytest.approx(1.0)
    assert train_rows.schedule(cfg, 100, 0.5) == pytest.approx(0.55)
    assert train_rows.schedule(cfg, 100, 1.0) == pytest.approx(0.1)
    assert train_rows.schedule(cfg, 100, 2.0) == pytest.approx(0.1)  # past the end: the floor
    constant = {**cfg, "schedule": "constant"}
    assert train_rows.schedule(constant, 100, 0.9) == 1.0
    with pytest.raises(SystemExit, match="cosine"):
        train_rows.schedule({**cfg, "schedule": "linear"}, 100, 0.5)


def test_a_resumed_cosine_run_goes_on_down_the_same_curve(tmp_path: Path):
    argv = ["--config", "smoke", "--schedule", "cosine", "--out_dir", str(tmp_path / "run"),
            "--cache_dir", str(tmp_path / "pool")]  # fmt: skip
    train_rows.main(argv)
    begun = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)["begun"]
    assert begun == 0.0
    train_rows.main([*argv, "--resume", "--max_steps", "5"])
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == 5 and ckpt["begun"] == begun and ckpt["minutes"] > begun


def test_targets_are_cut_to_what_ctc_can_align():
    assert train_rows.fit_ctc([1, 2, 3], 3) == [1, 2, 3]
    assert train_rows.fit_ctc([1, 1, 2], 3) == [1, 1]  # the repeat needs a blank between
    assert train_rows.fit_ctc([1, 1, 2], 4) == [1, 1, 2]
    assert train_rows.fit_ctc([5] * 6, 6) == [5, 5, 5]
    targets, lengths, cut = train_rows.encode_targets(["abc", "aab", "é"], 3)
    assert lengths.tolist() == [3, 2, 2] and cut == 1
    assert bytes(targets.tolist()) == b"abcaa" + "é".encode()


def test_dense_training_pages_are_drawn_from_the_given_lengths(tmp_path: Path):
    """--target_chars: the training pool's documents hold about as many characters as asked
    (their style shrunk to fit, as make eval's read-back pages are); held-out pages keep the
    data's own mix; a malformed range is refused before anything is rendered."""
    cfg = {**train_rows.DEFAULTS, "tier": "gist", "cache_dir": str(tmp_path / "pool")}
    dense = train_rows.build({**cfg, "target_chars": "4000,4400"}, "train", 3, dense=True)
    own = train_rows.build({**cfg, "target_chars": "4000,4400"}, "train", 3)
    assert all(len(t) > 3000 for t in dense.texts), [len(t) for t in dense.texts]
    assert dense.spec.target_chars == (4000, 4400) and own.spec.target_chars is None
    assert dense.texts != own.texts
    assert target_range("") is None
    for bad in ("4000", "5000,4000", "a,b", "10,20"):
        with pytest.raises(SystemExit, match="--target_chars"):
            target_range(bad)


def test_a_two_column_page_s_gutter_is_marked_and_read_column_by_column():
    """gutter_x finds the gap that two columns' lines share (not a heading across both, nor a
    table's rows); cell_targets(columns=True) marks it where each line crosses it, and the
    marked cells assemble in the order of the page's text layer, column after column. Measured
    on held-out two-column pages of the data engine, as make eval renders them: the row order
    scores ~27% against their text, the column order ~100%."""
    heading = [(100, 10, 300, 24, "Heading"), (310, 10, 700, 24, "across")]
    left = [(100, 100 + 30 * i, 200, 114 + 30 * i, f"left{i}") for i in range(6)]
    right = [(600, 100 + 30 * i, 700, 114 + 30 * i, f"right{i}") for i in range(6)]
    words = heading + left + right
    x = train_rows.gutter_x(words)
    assert x is not None and 200 <= x <= 600
    cells = cell_targets(words, 4, columns=True)
    assert sum(c.count(GUTTER) for c in cells) == 6  # each row of the columns, not the heading
    assert cell_targets(words, 4) == [c.replace(GUTTER, " ") for c in cells]
    assert assemble(cells, 4) == " ".join(
        ["Heading across", *(f"left{i}" for i in range(6)), *(f"right{i}" for i in range(6))]
    )
    table = [(100 + 200 * c, 100 + 30 * i, 150 + 200 * c, 114 + 30 * i, f"r{i}c{c}")
             for i in range(6) for c in range(3)]  # fmt: skip
    assert train_rows.gutter_x(table) is None  # three columns of a table: its rows are read across
    assert train_rows.gutter_x(left) is None  # one column


def test_held_out_two_column_pages_read_in_their_text_s_order():
    from lab import data
    from lab.metrics import precision

    for seed in range(40):
        doc = data.make_document(seed, "heldout", max_pages=1, target_chars=4000)
        if doc.layout == "two_column":
            break
    page = doc.pages[0]
    rows = assemble(cell_targets(page.words, 16), 16)
    columns = assemble(cell_targets(page.words, 16, columns=True), 16)
    assert precision(columns, page.text) > 0.95 > 0.5 > precision(rows, page.text)
