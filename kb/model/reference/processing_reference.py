"""Inputs of the reference model: page images -> pixel tensors, text <-> byte ids.

The vocabulary is the 256 byte values plus six special tokens, so nothing is ever downloaded and
every string (any language, any symbol) round-trips through UTF-8.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# --- vocabulary: ids 0..255 are the bytes themselves ---
PAD = 256  # fills batches and the last group of a text page's 4 bytes
BOS = 257  # starts every reader sequence
EOS = 258  # the reader is done
READ = 259  # task: read this page back
ASK = 260  # task: a question follows
SEP = 261  # end of the question; the answer follows
SPECIAL_TOKENS = {"PAD": PAD, "BOS": BOS, "EOS": EOS, "READ": READ, "ASK": ASK, "SEP": SEP}
VOCAB_SIZE = 262
# The reader only ever writes bytes or EOS; the other specials are suppressed while generating.
NEVER_GENERATED = (PAD, BOS, READ, ASK, SEP)


def encode_text(text: str) -> list[int]:
    """UTF-8 bytes of ``text`` as ids 0..255."""
    return list(text.encode("utf-8"))


def decode(ids: list[int] | torch.Tensor) -> str:
    """Ids back to a string: special tokens are dropped, invalid UTF-8 becomes U+FFFD."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def read_prompt() -> list[int]:
    """The reader's prompt to read a page back: BOS READ."""
    return [BOS, READ]


def ask_prompt(question: str) -> list[int]:
    """The reader's prompt for a question: BOS ASK question SEP."""
    return [BOS, ASK, *encode_text(question), SEP]


def text_to_ids(text: str, bytes_per_token: int = 4) -> torch.Tensor:
    """A page's text as byte ids, padded with PAD to a whole number of memory tokens.

    Empty text still gives one (all-PAD) token, so every page has at least one memory token.
    Returns (n,) int64 with n a positive multiple of ``bytes_per_token``.
    """
    ids = encode_text(text)
    n = max(1, -(-len(ids) // bytes_per_token)) * bytes_per_token
    return torch.tensor(ids + [PAD] * (n - len(ids)), dtype=torch.long)


def text_token_count(text: str, bytes_per_token: int = 4) -> int:
    """Memory tokens of a text page: ceil(UTF-8 bytes / bytes_per_token), at least 1."""
    return max(1, -(-len(text.encode("utf-8")) // bytes_per_token))


def image_to_tensor(image: Image.Image, size: int, channels: int = 1) -> torch.Tensor:
    """A square page render -> (channels, size, size) float32, ink = 1, paper = 0.

    Grayscale by default: documents are mostly dark ink on light paper, and one channel costs a
    third of three at the stem. Values are inverted (1 - pixel / 255) so that blank paper is 0:
    the stem's zero padding then looks like the page margin, and empty regions carry no signal.
    The image must already be at the tier's size; nothing is resized here (that is the
    renderer's job, and a silent resize would hide a wrong tier).
    """
    if image.size != (size, size):
        raise ValueError(
            f"page image is {image.size[0]}x{image.size[1]} px, tier expects {size}x{size}"
        )
    if channels == 1:
        array = np.array(image.convert("L"), dtype=np.uint8)[None]  # (1, S, S)
    elif channels == 3:
        array = np.array(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)  # (3, S, S)
    else:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    pixels = torch.from_numpy(np.ascontiguousarray(array)).float()  # a writable copy
    return 1.0 - pixels / 255.0


def images_to_batch(images: list[Image.Image], size: int, channels: int = 1) -> torch.Tensor:
    """Page renders -> (B, channels, size, size) float32."""
    return torch.stack([image_to_tensor(im, size, channels) for im in images])


BLANK = 0  # the cell reader's CTC blank: the NUL byte never occurs in page text


def ctc_greedy(scores: torch.Tensor) -> list[str]:
    """(T, N, 256) CTC log-probabilities (or logits: the same argmax) -> per sequence the best
    path, repeats merged and blanks dropped, as UTF-8 text."""
    ids = scores.argmax(-1).T  # (N, T)
    prev = torch.cat([torch.full_like(ids[:, :1], BLANK), ids[:, :-1]], dim=1)
    keep = (ids != BLANK) & (ids != prev)  # a new byte: not blank, not a repeat
    data = bytes(ids[keep].tolist())  # every sequence's bytes, one after another
    out, start = [], 0
    for n in keep.sum(1).tolist():
        out.append(data[start : start + n].decode("utf-8", errors="replace"))
        start += n
    return out


def utf8_tensor(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor (a page's read-back, cached beside its tensors)."""
    return torch.tensor(list(data), dtype=torch.uint8)


# The cell reader writes this where a line crosses a page's column gutter (lab.train_rows'
# gutter_x): the lines of two columns that share a row are read apart, column after column.
GUTTER = "\t"
# Fewer marks on a page than this, or than this share of its lines: stray ones, read as spaces
# (a two-column page's lines nearly all cross its gutter; the reader misses some marks)
GUTTER_MIN_MARKS = 3
GUTTER_MIN_SHARE = 0.3


def assemble(cells: list[str], grid: int) -> str:
    """A page's cell read-backs (raster order, grid x grid) -> its text. Each cell holds its
    characters of the lines of its row of cells, separated by newlines, so in a row line j is
    the cells' j-th pieces left to right; lines and rows are joined by a space.

    A page whose cells mark a column gutter (GUTTER, in the column of cells that holds most of
    the marks) is read column by column, as its text layer is: a line's part left of the gutter
    goes to the left column, the rest to the right one. A line across both sides above the
    first marked line is a heading over both columns, read across; below it, a line without a
    mark is a column line whose mark the reader missed, and is split at the gutter too."""
    if len(cells) != grid * grid:
        raise ValueError(f"{len(cells)} cells are not a {grid} x {grid} grid")
    marks = [i % grid for i, cell in enumerate(cells) for _ in range(cell.count(GUTTER))]
    lines = sum(
        max(len(cells[r * grid + c].split("\n")) for c in range(grid)) for r in range(grid)
    )  # lines of the page (a row of cells holds as many in each of its cells)
    gutter = None
    if len(marks) >= max(GUTTER_MIN_MARKS, GUTTER_MIN_SHARE * lines):
        gutter = max(set(marks), key=marks.count)
    out: list[str] = []
    left: list[str] = []
    right: list[str] = []
    columns = False  # a marked line seen: from here on, every line is split at the gutter
    for r in range(grid):
        parts = [cells[r * grid + c].split("\n") for c in range(grid)]
        for j in range(max(len(p) for p in parts)):
            pieces = [p[j] if j < len(p) else "" for p in parts]
            if gutter is None:
                line = "".join(pieces).replace(GUTTER, " ").strip()
                if line:
                    out.append(line)
                continue
            a, mid, b = "".join(pieces[:gutter]), pieces[gutter], "".join(pieces[gutter + 1 :])
            if GUTTER in mid:
                m0, m1 = mid.split(GUTTER, 1)
                a, b = a + m0, m1 + b
                columns = True
            elif a.strip() and b.strip() and not columns:  # a heading above the columns
                out += left + right + ["".join(pieces).replace(GUTTER, " ").strip()]
                left, right = [], []
                continue
            elif a.strip() or not b.strip():
                a += mid
            else:
                b = mid + b
            for side, text in ((left, a), (right, b)):
                if text := text.replace(GUTTER, " ").strip():
                    side.append(text)
    return " ".join(out + left + right)
