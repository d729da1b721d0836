from __future__ import annotations

import pytest
import torch
from PIL import Image

from kb.model.reference.processing_reference import (
    ASK,
    BLANK,
    BOS,
    EOS,
    GUTTER_MIN_MARKS,
    GUTTER_MIN_SHARE,
    PAD,
    READ,
    SEP,
    VOCAB_SIZE,
    ask_prompt,
    assemble,
    ctc_greedy,
    decode,
    encode_text,
    image_to_tensor,
    images_to_batch,
    read_prompt,
    text_to_ids,
    text_token_count,
)


def test_vocabulary_is_bytes_plus_specials():
    assert sorted([PAD, BOS, EOS, READ, ASK, SEP]) == list(range(256, VOCAB_SIZE))


def test_text_round_trips_through_bytes():
    text = "Invoice № 42 — total 3,14 € (ünïcödé, 日本)"
    ids = encode_text(text)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert decode(ids) == text
    assert decode(torch.tensor(ids)) == text


def test_decode_drops_specials_and_replaces_invalid_utf8():
    assert decode([BOS, *encode_text("ok"), EOS, PAD]) == "ok"
    assert decode([0x61, 0xFF, 0x62]) == "a\ufffdb"
    assert decode(encode_text("é")[:1]) == "\ufffd"  # a cut multi-byte character


def test_prompts():
    assert read_prompt() == [BOS, READ]
    assert ask_prompt("hi?") == [BOS, ASK, ord("h"), ord("i"), ord("?"), SEP]


def test_text_ids_pad_to_whole_tokens():
    ids = text_to_ids("hello")  # 5 bytes -> 2 tokens of 4
    assert ids.tolist() == [*encode_text("hello"), PAD, PAD, PAD]
    assert text_token_count("hello") == 2
    assert text_to_ids("").tolist() == [PAD] * 4  # every page has at least one token
    assert text_token_count("") == 1
    assert text_token_count("é" * 4) == 2  # bytes, not characters


def test_image_ink_is_one_paper_is_zero():
    image = Image.new("RGB", (256, 256), "white")
    image.putpixel((3, 5), (0, 0, 0))
    x = image_to_tensor(image, 256)
    assert x.shape == (1, 256, 256) and x.dtype == torch.float32
    assert x[0, 5, 3] == 1.0 and x.sum() == 1.0
    assert image_to_tensor(image, 256, channels=3).shape == (3, 256, 256)
    assert images_to_batch([image, image], 256).shape == (2, 1, 256, 256)


def test_image_of_the_wrong_size_fails_with_numbers():
    with pytest.raises(ValueError, match="page image is 500x512 px, tier expects 512x512"):
        image_to_tensor(Image.new("L", (500, 512), 255), 512)


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    ids = [BLANK, ord("a"), ord("a"), BLANK, ord("a"), ord("b"), BLANK, BLANK]
    log_probs = torch.full((len(ids), 1, 256), -10.0)
    for t, c in enumerate(ids):
        log_probs[t, 0, c] = 0.0
    assert ctc_greedy(log_probs) == ["aab"]


def test_assemble_reads_a_marked_gutter_column_by_column():
    """Cells that mark a column gutter (GUTTER, in column 1 of a 3 x 3 grid here) are read
    left column first, then the right one; a heading across both columns comes before the
    columns under it; without marks (or with fewer than GUTTER_MIN_MARKS) rows are read across."""
    cells = [
        "Two col", "umn heading", "",  # row 0: one line across both columns, no mark
        "left one\nleft two", "\t\n\t", "right one\nright two",  # row 1: two lines, marked
        "left three", "\t", "right three",  # row 2
    ]  # fmt: skip
    assert assemble(cells, 3) == (
        "Two column heading left one left two left three right one right two right three"
    )
    stray = ["a", "\t", "b", "", "", "", "c", "", ""]  # one mark: a space
    assert assemble(stray, 3) == "a b c"
    assert GUTTER_MIN_MARKS > 1
    # three marks among twelve lines (four a row of cells): under GUTTER_MIN_SHARE, read across
    few = ["a\nb\nc\nd", "\t\n\n\n", "e\nf\ng\nh"] + ["i\nj\nk\nl", "\t\n\n\n", "m\nn\no\np"]
    few += ["q\nr\ns\nt", "\t\n\n\n", "u\nv\nw\nx"]
    assert 3 < GUTTER_MIN_SHARE * 12
    assert assemble(few, 3) == "a e bf cg dh i m jn ko lp q u rv sw tx"  # rows, marks as spaces


def test_assemble_puts_a_rows_lines_back_together_from_its_cells():
    cells = ["Hello \nsec", "world\nond", "", "", "", "", "", "", ""][:4]  # a 2 x 2 grid
    assert assemble(cells, 2) == "Hello world second"
    assert assemble(["a\n", "b\nc", "", "tail"], 2) == "ab c tail"
    with pytest.raises(ValueError, match="3 cells are not a 2 x 2 grid"):
        assemble(["", "", ""], 2)
