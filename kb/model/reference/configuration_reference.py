"""Configuration of the reference optical-memory model (encoder + reader).

Every default carries its reason. The config travels inside the weights file (safetensors metadata,
as JSON), so ``from_dict`` must keep old checkpoints loading: unknown keys are ignored and fields
added since then take their defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ingest.tiers import VISION_TIERS


def _default_tier_sizes() -> dict[str, int]:
    # The square render of each vision tier (ingest.tiers, the one tier table): one token per
    # 64 x 64 px cell.
    return {tier.name: tier.size for tier in VISION_TIERS}


@dataclass
class ReferenceConfig:
    # --- vocabulary (processing_reference.py) ---
    vocab_size: int = 262  # 256 byte values + PAD BOS EOS READ ASK SEP: no tokenizer to download

    # --- page images -> vision tokens ---
    in_channels: int = 1  # grayscale: documents are ink on paper; colour triples the stem's input
    patch_size: int = 16  # the stem's stride: 16 x 16 pixels, a few glyphs of a 512 px page
    # "conv": 3x3 stride-2 conv, 3x3 stride-2 conv, 4x4 stride-4 conv. Glyphs are 6-8 px tall at
    # the tiny tier; strokes seen at 1/2 and 1/4 resolution first are learnt far sooner than by
    # one linear 16 x 16 patch projection ("patch", the first shipped weights' stem).
    stem: str = "conv"
    stem_channels: int = 32  # channels at 1/2 resolution (twice that at 1/4): strokes are simple
    compress: int = 4  # 4 x 4 stride-4 conv: 16x fewer tokens (DeepSeek-OCR's 16x compressor)
    # "conv": that conv mixes the 4 x 4 positions of a cell into the token. "stack": each
    # position is projected to d_model / 16 dims and the 16 are stacked into the token in
    # reading order (row by row, left to right; space-to-depth), so a reader can spell a cell
    # position by position (cell_groups) -- what a line reader's CTC finds easy to align.
    compressor: str = "conv"
    tier_sizes: dict[str, int] = field(default_factory=_default_tier_sizes)  # 16 * 4 = 64 px/token
    enc_conv_dim: int = 128  # channels at 1/16 resolution (32 x 32 cells at tiny): keep it narrow
    enc_conv_blocks: int = 3  # ConvNeXt blocks; three 7 x 7 depthwise convs see 19 cells, ~300 px
    enc_layers: int = 2  # transformer layers over the g x g page tokens: page-wide layout context
    # The cell reader (issue 9): each vision token spelled out as cell_slots CTC positions over
    # the 256 byte values (NUL is the blank) -- the characters of its 64 x 64 px cell, lines
    # separated by a newline -- which is what a read-back of an optical tier returns
    # (processing_reference.assemble). 0: no cell reader (the decoder reads instead).
    cell_slots: int = 0  # ~2x a cell's characters: CTC needs a blank between repeated bytes
    cell_hidden: int = 64
    # 0: the whole token is mapped to the cell_slots positions. G: the token is read as G equal
    # groups of dims (the "stack" compressor's positions, in reading order), each by one shared
    # map into cell_slots / G positions, plus a learnt code per position.
    cell_groups: int = 0

    # --- page text -> text tokens (the "text" tier) ---
    text_bytes_per_token: int = 4  # one memory token per 4 UTF-8 bytes: "text tokens = chars / 4"
    # "slots": each byte of a token gets its own d_model/4 slice (byte i of the token in slice i,
    # one slice per reader head at 4 heads), so a head can address one byte of a token; the
    # original "conv" (a stride-4 Conv1d) mixed the 4 bytes linearly and the reader had to
    # unmix them (reading-on-a-cpu.md, section 2).
    text_encoder: str = "slots"
    # Transformer layers over a text page's tokens: a token must know its neighbours ("the access
    # code for the Falcon archive is ...") for a question to find it by content. Per page, so
    # it is computed once at ingest and cached like a vision tier.
    text_layers: int = 2

    # --- the copy path: answers are spans copied from the text tier, never generated ---
    # Start and end keys per byte of a text page (span_dim each), cached with the page; the
    # reader's state after the question gives a start and an end query, the best-scoring span
    # (end - start < max_answer_bytes) is the answer, copied byte for byte: names, codes and
    # amounts come out exact. A learned "null" score says the memory holds no answer.
    span_head: bool = True
    # per byte, fp16: 2 * 32 * 2 B = 128 B per byte of text (192 B with copy_head), 0.25 MB a page
    span_dim: int = 32
    max_answer_bytes: int = 96  # longer answers than that are sentences, not spans
    # Added to every byte's start and end logits, times the lexical score of its sentence
    # (kb.embed.lexical_bias: the IDF share of the question's words it contains), in training
    # and at inference alike: the copy path then learns which span of a matching sentence
    # answers (a name for "who", a date for "when"), not to find the sentence from scratch,
    # which a short CPU run did not learn (reading-on-a-cpu.md: alignment is the hard part).
    span_lexical: float = 4.0
    # "No answer" competes with the best span by logits, and was learnt against memories of
    # about this many text bytes (training's 1-8 pages of up to 1,600 bytes). Over a memory of
    # P bytes its start and end logits each move by log(P / span_null_bytes): every byte is one
    # more place an answer could be, so a small memory needs less evidence and a large one more
    # (measured: without it, 4 short pages said "not found" to every question and 100 pages
    # invented answers to 60% of absent ones; docs/benchmarks.md).
    span_null_bytes: int = 6000
    # The read pointer (a pointer-generator output, See et al. 2017): a third key per text byte
    # (span_dim, cached with the start and end keys), and at every step the reader points at
    # the byte it copies next; the next-byte distribution is a learned mix of the generated one
    # and the bytes pointed at. Trained with the pointer's own target (training knows where
    # every byte it writes lives). Without it the reader learnt to attend to the right token
    # but not to use its value: read-back stayed at the language prior's 20% (docs/benchmarks.md).
    copy_head: bool = False
    # The pointer's location prior: a learned bonus for pointing at the byte o after the one it
    # pointed at one step before, o in -1 .. copy_offsets - 2 (0 = none). Reading goes on where
    # it left off, so the query only has to find where to start (modeling_reference._follow).
    copy_offsets: int = 0

    # --- shared width of memory tokens and reader ---
    d_model: int = 256  # wide enough for 4 bytes per text token; fp16 weights stay ~15 MB
    n_heads: int = 4  # head dim 64, the usual size for scaled_dot_product_attention kernels
    mlp_ratio: int = 4  # the transformer standard

    # --- reader (byte-level causal decoder with cross-attention to the memory) ---
    n_layers: int = 4  # each layer caches (k, v) per page: kv bytes = 2 * n_layers * tokens bytes
    rope_base: float = 10000.0  # rotary positions in self-attention: no maximum question length
    # Absolute positions added to the reader's byte embeddings, on the text tier's scale (byte p
    # gets the code of memory token p / 4): rotary self-attention tells a byte where it is only
    # relative to others, so without them the reader cannot say which part of a page comes next
    # except by matching content, a circuit a small CPU run never found.
    reader_abs_pos: bool = True
    dropout: float = 0.0  # synthetic training data is unlimited: nothing to regularise yet

    # --- generation: the repetition guard ---
    repeat_max_ngram: int = 16  # loops longer than 16 bytes are rare in a small byte model
    repeat_times: int = 4  # an n-gram 4 times in a row is a loop, not text ...
    repeat_min_span: int = 24  # ... and so is any run covering 24 bytes ("----" rules are shorter)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_heads} must be even for rotary")
        if self.d_model % 4:
            raise ValueError(f"d_model {self.d_model} must be a multiple of 4 (2D sin/cos)")
        if self.text_encoder not in ("conv", "slots"):
            raise ValueError(f"text_encoder must be 'conv' or 'slots', got {self.text_encoder!r}")
        if self.text_encoder == "slots" and self.d_model % self.text_bytes_per_token:
            raise ValueError(
                f"d_model {self.d_model} must split into {self.text_bytes_per_token} byte slots"
            )
        if self.copy_head and not self.span_head:
            raise ValueError("copy_head keys are cached beside the span head's: needs span_head")
        if self.stem not in ("conv", "patch"):
            raise ValueError(f"stem must be 'conv' or 'patch', got {self.stem!r}")
        if self.stem == "conv" and self.patch_size != 16:
            raise ValueError(f"the conv stem has stride 16, got patch_size {self.patch_size}")
        if self.compressor not in ("conv", "stack"):
            raise ValueError(f"compressor must be 'conv' or 'stack', got {self.compressor!r}")
        if self.compressor == "stack" and self.d_model % self.compress**2:
            raise ValueError(f"d_model {self.d_model} does not stack {self.compress**2} positions")
        if self.cell_groups and (
            self.d_model % self.cell_groups or self.cell_slots % self.cell_groups
        ):
            raise ValueError(
                f"cell_groups {self.cell_groups} must divide d_model {self.d_model} and "
                f"cell_slots {self.cell_slots}"
            )
        if self.cell_slots < 0 or (self.cell_slots and self.cell_hidden < 1):
            raise ValueError(
                f"cell_slots {self.cell_slots} / cell_hidden {self.cell_hidden}: "
                "cell_slots >= 0, and cell_hidden >= 1 with a cell reader"
            )
        for tier, size in self.tier_sizes.items():
            if size % self.cell:
                raise ValueError(f"tier {tier!r}: size {size} is not a multiple of {self.cell} px")

    @property
    def cell(self) -> int:
        """Pixels per vision token side: stem stride times compressor stride."""
        return self.patch_size * self.compress

    @property
    def tiers(self) -> list[str]:
        """Tier names in tier-embedding order: the text tier first, then the vision tiers."""
        return ["text", *self.tier_sizes]

    def tier_tokens(self, tier: str) -> int:
        size = self.tier_sizes[tier]
        return (size // self.cell) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceConfig:
        """Keys this version does not know are dropped; fields the data lacks take defaults."""
        known = {f.name for f in fields(cls)}
        if data and "stem" not in data:  # saved before these were configurable
            data = {**data, "stem": "patch", "reader_abs_pos": False}
        if data and "text_encoder" not in data:  # saved before the slot encoder and span head
            data = {**data, "text_encoder": "conv", "text_layers": 0, "span_head": False}
        if data and "span_lexical" not in data:  # span heads trained before the lexical bias
            data = {**data, "span_lexical": 0.0, "span_null_bytes": 0}
        return cls(**{k: v for k, v in data.items() if k in known})
