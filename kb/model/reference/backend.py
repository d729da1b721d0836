"""The reference backend: the project's own small optical-memory model on the CPU.

Weights ship as fp16 safetensors (default ``weights/reference.safetensors`` beside this file) with
the config and training facts (step, ...) in the file's metadata, and a ``.sha256`` file beside it
that must match before anything is loaded. Without a weights file the backend builds a
deterministic random initialisation and says so (``trained = False``): everything runs for real,
the answers just mean nothing until the model is trained.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from kb import aggregate
from kb.embed import (
    EMBED_DIM,
    SentenceEmbedder,
    char_segments,
    correct_read,
    identifier_key,
    identifiers,
    lexical_scores_of_sets,
    read_as,
    segments,
    terms,
)
from kb.model.base import NOT_FOUND, Answer, Backend, ContextPage, PageTensors, drain
from kb.model.reference import extractor as fine
from kb.model.reference.configuration_reference import ReferenceConfig
from kb.model.reference.modeling_reference import Memory, ReferenceModel, SpanKeysOf
from kb.model.reference.processing_reference import (
    PAD,
    ask_prompt,
    assemble,
    decode,
    images_to_batch,
    read_prompt,
    text_to_ids,
    text_token_count,
    utf8_tensor,
)

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "reference.safetensors"
FORMAT = "kb-reference/1"  # the "format" metadata key: what wrote the file
INIT_SEED = 0  # the random initialisation used while no weights are shipped
# The question scorer's bias on the copy path's start and end logits, per byte: weight * (cosine
# of the question with the byte's sentence - floor). Chosen on held-out synthetic questions
# (lab.eval_text), never on the natural-question documents it is measured on.
SEGMENT_WEIGHT = 8.0
SEGMENT_FLOOR = 0.45
# The lexical score of a segment's whole page, added to its own at this share: a fact's words are
# often split over a page (the meeting's date in its heading, the task in a bullet). Chosen on the
# held-out lab.qa documents and synthetic needles, not on lab/natural: the answer reached the
# reader for 89.9 -> 93.0% of the 922 held-out people's questions (0.5: 92.5%, 2: 92.1%), for 6 -> 9
# of 10 needles among 1,000 pages; span right end to end 87 -> 90 of 308 of those questions.
PAGE_LEXICAL_WEIGHT = 1.0
# Windows read beyond the TOP best segments: the best ones of the page whose words match the
# question best (reading_windows). Chosen on the held-out needles and lab.qa's questions.
PAGE_FIRST = 4
# The weight of a page's share of the question's rare words (0..1) beside the reader's score
# (logits; the windows that answer score about 1-15) when choosing among windows that answer
# (_extract). Chosen on the held-out needles and lab.qa's questions (offline over the windows
# read): 0-4 change nothing, 6-16 win a needle and a people's question, 24-32 one more of those.
PAGE_PRIOR = 24.0


class WeightsIntegrityError(RuntimeError):
    """The weights file does not match its recorded sha256 (or has no checksum to match)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(weights: Path) -> Path:
    """``reference.safetensors`` -> ``reference.sha256`` beside it."""
    return Path(weights).with_suffix(".sha256")


def save_weights(
    model: ReferenceModel,
    config: ReferenceConfig,
    path: str | Path,
    extra_metadata: dict[str, Any] | None = None,
) -> str:
    """Write fp16 safetensors with the config (and e.g. step, loss) in the metadata, then the
    ``.sha256`` file beside it (``sha256sum`` format). Returns the file's sha256 hex digest.

    Non-string metadata values are stored as JSON. The file is written under a temporary name
    and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()
    }
    metadata = {"step": "0"}
    for key, value in (extra_metadata or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    metadata["format"] = FORMAT
    metadata["config"] = json.dumps(config.to_dict(), sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # safetensors creates it private; shipped weights are read by any user
    os.replace(tmp, path)
    digest = sha256_file(path)
    checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


def load_model(
    path: str | Path, device: str = "cpu"
) -> tuple[ReferenceModel, ReferenceConfig, dict[str, str]]:
    """Verify ``path`` against its ``.sha256`` file, then rebuild the model from the config in
    its metadata. Returns (model in eval mode, config, metadata); the metadata is the file's own
    plus ``sha256``, the digest that was verified."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference weights at {path}")
    sums = checksum_path(path)
    if not sums.is_file():
        raise WeightsIntegrityError(f"{path}: no checksum file {sums}; refusing to load")
    recorded = sums.read_text().split()
    expected = recorded[0].lower() if recorded else ""
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsIntegrityError(
            f"{path}: sha256 is {actual} but {sums} says {expected or '(empty)'}; "
            "refusing to load (corrupt or replaced weights?)"
        )
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        state = {key: f.get_tensor(key) for key in f.keys()}
    if "config" not in metadata:
        raise ValueError(f"{path}: no 'config' in the safetensors metadata; not reference weights")
    config = ReferenceConfig.from_dict(json.loads(metadata["config"]))
    model = ReferenceModel(config)
    expected_keys = set(model.state_dict())
    missing, unexpected = expected_keys - set(state), set(state) - expected_keys
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit this code's model: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    metadata["sha256"] = actual
    return model.to(device).eval(), config, metadata


def random_model(config: ReferenceConfig, seed: int = INIT_SEED) -> ReferenceModel:
    """The deterministic random initialisation, rounded through fp16 exactly as saving would."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReferenceModel(config)
    return model.half().float().eval()


def weights_digest(model: ReferenceModel, config: ReferenceConfig) -> str:
    """sha256 of the config and the fp16 weights: what identifies an in-memory model."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()


_WORD_BYTE = re.compile(rb"[\w\x80-\xff]")
_SCHEME = re.compile(rb"(?<![\w.+-])[A-Za-z][A-Za-z0-9+.-]*://$")
_JOINERS = b"-.,:/'"  # inside a word or number when a word character follows: QZ-4410, 4.2, 8,210
_BRACKETS = ((b"(", b")"), (b"[", b"]"), (b"<", b">"), (b"{", b"}"))


def whole_words(data: bytes, a: int, b: int) -> tuple[int, int]:
    """Widen the byte span [a, b) of ``data`` to whole words: a span that starts or ends inside a
    word, a code or a number takes all of it ("Osa" -> "Osaka", "4" -> "4.2"). The copy path
    scores bytes; people read words."""

    def word(i: int) -> bool:
        return 0 <= i < len(data) and bool(_WORD_BYTE.match(data[i : i + 1]))

    def joined(i: int) -> bool:  # a joiner between two word characters
        return 0 <= i < len(data) and data[i] in _JOINERS and word(i - 1) and word(i + 1)

    if a >= b:
        return a, b
    while word(a - 1) or joined(a - 1):
        a -= 1
    while word(b) or joined(b):
        b += 1
    # A URL keeps its scheme ("https://www.gnu.org/..."), an extension or a dotfile its dot
    # (".tgz", "~/.bashrc": a dot after a space or a slash, before a word).
    if scheme := _SCHEME.search(data[max(0, a - 16) : a]):
        a -= len(scheme.group())
    elif word(a) and data[a - 1 : a] == b"." and (a == 1 or data[a - 2] in b" \t\n/(\"'"):
        a -= 1
    # A bracket the span opens or closes takes its partner where it is next to the span:
    # "pidfd_send_signal(2" -> "pidfd_send_signal(2)", "pattern>" -> "<pattern>".
    for opener, closer in _BRACKETS:
        span = data[a:b]
        if span.count(opener) > span.count(closer) and data[b : b + 1] == closer:
            b += 1
        elif span.count(closer) > span.count(opener) and a > 0 and data[a - 1 : a] == opener:
            a -= 1
    return a, b


@dataclass
class Packed:
    """One packing of pages (ReferenceBackend.packed): the memory, and what the question scorer
    needs of the text pages' segments (sentences, headings, rows)."""

    key: tuple
    keep: list  # the tensors the key's ids refer to: alive as long as the key is
    memory: Memory
    first_byte: dict[int, int]  # page index -> its first byte among the memory's text bytes
    segment_terms: list[set[str]]  # per segment of the text pages: its content words
    segments: torch.Tensor  # (S, 384) embeddings, NaN rows where a page has none cached
    byte_segment: torch.Tensor  # (P,) each text byte's segment, -1 = none
    # per segment: (page index, its number on the page); per text page: its segments' char bounds
    segment_at: list[tuple[int, int]] = field(default_factory=list)
    page_segments: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # per text page (in page order): its content words; per segment: its page's index there
    page_terms: list[set[str]] = field(default_factory=list)
    segment_page: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    # per text page (page index ->): its text as embed.identifier_key writes it
    page_keys: dict[int, str] = field(default_factory=dict)
    # the pages whose text is an optical tier's read-back (page indices), and each word of their
    # segments -> the segments that hold it: where a question's words are looked for as read
    read_pages: set[int] = field(default_factory=set)
    read_words: dict[str, list[int]] = field(default_factory=dict)
    _read_terms: tuple = ()  # the last question's (question, segment terms, page terms)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively (on a CPU: oneDNN's AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


class ReferenceBackend(Backend):
    """The Backend of base.py for the reference model.

    ``path``: a weights file, or a directory holding ``reference.safetensors``; default: the
    shipped weights, else a random initialisation. ``config`` is only for a random
    initialisation (tests use tiny ones); a weights file brings its own.
    """

    name = "reference"
    # 64k memory tokens: 1,000 tiny pages (or 4,000 gist pages) in one question. Its fp32 kv is
    # 64k * 4 layers * 2 * 256 * 4 B = 0.5 GB of RAM and every answer byte reads all of it once:
    # a 32-byte answer over it took ~1 s on two CPU cores (cost is linear in memory tokens).
    context_budget = 65536
    context_limit: int | None = None  # cross-attention has no window: any budget a caller asks

    def __init__(
        self,
        path: str | Path | None = None,
        device: str = "cpu",
        config: ReferenceConfig | None = None,
        batch_size: int = 16,
        scorer: SentenceEmbedder | bool | None = None,
        extractor: fine.SpanExtractor | bool | None = None,
        answer_threshold: float | None = None,
        bf16: bool | None = None,
        identifiers: bool = True,
    ):
        if path is None and config is None and DEFAULT_WEIGHTS.is_file():
            path = DEFAULT_WEIGHTS
        self.device = torch.device(device)
        self.answer_threshold = answer_threshold  # None: the extractor file's calibrated one
        self.batch_size = batch_size  # pages per encoder call: bounds activation memory at base
        # Encoding (ingest's work: every page at every tier, its text and its segments) under
        # bfloat16 autocast where the CPU multiplies bf16 natively (AMX / AVX512-BF16): MiniLM 2.9x,
        # base 2.0x in-process (docs/benchmarks.md, "Ingest end to end"). What is stored is fp16
        # either way; questions are answered in fp32.
        self.bf16 = bf16 if bf16 is not None else native_bf16(self.device)
        # The copy path reads only pages that name the question's codes and numbers, and says
        # not found where none does (_extract; docs/benchmarks.md measures it both ways).
        self.identifiers = identifiers
        if path is not None:
            if config is not None:
                raise ValueError("a weights file brings its own config; pass path or config")
            path = Path(path)
            if path.is_dir():
                path = path / DEFAULT_WEIGHTS.name
            model, config, self.metadata = load_model(path, device)
            self.weights_path: Path | None = path
            self.version = "reference-" + self.metadata["sha256"][:12]
            self.trained = int(self.metadata.get("step", "0")) > 0
        else:
            config = config or ReferenceConfig()
            model = random_model(config).to(self.device)
            self.metadata = {"seed": str(INIT_SEED)}
            self.weights_path = None
            self.version = "reference-" + weights_digest(model, config)[:12]
            self.trained = False
            log.warning(
                "no reference weights at %s: using a random initialisation (seed %d, %s); "
                "encodings are real but answers mean nothing until the model is trained",
                DEFAULT_WEIGHTS,
                INIT_SEED,
                self.version,
            )
        # channels_last: the convolutional encoder runs 1.4x faster on this CPU (docs/benchmarks.md,
        # "Ingest end to end"); only 4-d weights change layout, the values are the same.
        self.model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.config = config
        self.tier_tokens = {tier: config.tier_tokens(tier) for tier in config.tier_sizes}
        self.image_mode = "L" if config.in_channels == 1 else "RGB"
        # The question scorer (kb.embed): a pretrained sentence embedder whose question-to-segment
        # cosines bias the copy path towards the sentences that answer (SEGMENT_WEIGHT). On by
        # default for trained weights; a random initialisation (tests) goes without unless given.
        if scorer is None:
            scorer = self.trained and config.span_head
        if scorer is True:
            scorer = SentenceEmbedder()
        self.scorer: SentenceEmbedder | None = scorer or None
        # The copy path's fine stage (extractor.py): reads the best-scoring segments' windows and
        # copies the answer out of them. On by default where its weights ship and the scorer is on.
        # Loaded on first use (a worker, which only encodes, never loads it); its file is checked
        # now. (It reads text, not tensors: the tensors' version does not depend on it.)
        if extractor is None:
            extractor = self.scorer is not None and fine.WEIGHTS.is_file()
        self._extractor_path: Path | None = None
        self._extractor: fine.SpanExtractor | None = None
        if extractor is True:
            fine.verify(fine.WEIGHTS)
            self._extractor_path = fine.WEIGHTS
        elif extractor:
            self._extractor = extractor
        self._extractor_lock = threading.Lock()
        self._packed_lock = threading.Lock()
        self._last_packed: Packed | None = None

    # --- Backend ---

    def encode(self, images: list[Image.Image], tier: str) -> list[PageTensors]:
        """Pages at the tier's size -> per page {"tokens": (T, D), "kv": (L, 2, T, D)}, fp16."""
        if tier not in self.config.tier_sizes:
            raise ValueError(
                f"unknown vision tier {tier!r}; expected one of {list(self.tier_tokens)}"
            )
        size = self.config.tier_sizes[tier]
        pages: list[PageTensors] = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(images), self.batch_size):
                batch = images[start : start + self.batch_size]
                pixels = images_to_batch(batch, size, self.config.in_channels).to(self.device)
                pixels = pixels.contiguous(memory_format=torch.channels_last)
                tokens = self.model.encode_images(pixels, tier)  # (b, T, D)
                kv = self.model.page_kv(tokens)  # (b, L, 2, T, D)
                tokens = tokens.to("cpu", torch.float16)
                kv = kv.to("cpu", torch.float16)
                # clone: each page owns its memory (no view keeping the whole batch alive)
                pages.extend(
                    {"tokens": tokens[i].clone(), "kv": kv[i].clone()} for i in range(len(batch))
                )
        if self.config.cell_slots:  # what each page reads back, from its stored (fp16) tokens
            for page in pages:
                page["read"] = utf8_tensor(self._read_cells(page["tokens"]))
        return pages

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def text_tokens(self, text: str) -> int:
        return text_token_count(text, self.config.text_bytes_per_token)

    def encode_text(self, texts: list[str]) -> list[PageTensors]:
        """Pages' text -> per page the text tier's {"kv": (L, 2, T, D), "span": (K, 4T, Ds)},
        fp16: computed once at ingest and cached like a vision tier (the text encoder has
        transformer layers; a question over 1,000 pages could not afford to run it)."""
        pages: list[PageTensors] = []
        k = self.config.text_bytes_per_token
        with torch.inference_mode(), self._autocast():
            for text in texts:  # one at a time: pages differ in length, padding would cost more
                ids = text_to_ids(text, k).to(self.device)[None]  # (1, n)
                tokens = self.model.encode_text(ids)  # (1, T, D)
                out = {"kv": self.model.page_kv(tokens)[0].to("cpu", torch.float16).clone()}
                if self.config.span_head:
                    span = self.model.page_span(tokens, ids)[0]  # (K, n, Ds)
                    out["span"] = span.to("cpu", torch.float16).clone()
                pages.append(out)
        if self.scorer is not None and self.config.span_head:
            # Every page's segments in one call: batches of similar length pad less (1.4x faster
            # than page by page).
            bounds = [segments(text) for text in texts]
            datas = [text.encode("utf-8") for text in texts]
            sentences = [
                data[a:b].decode("utf-8", "replace")
                for data, page_bounds in zip(datas, bounds, strict=True)
                for a, b in page_bounds
            ]
            with self._autocast():
                vectors = self.scorer.embed(sentences).to(torch.float16)  # (all segments, 384)
            for out, page_bounds, page_vectors in zip(
                pages, bounds, vectors.split([len(b) for b in bounds]), strict=True
            ):
                if page_bounds:
                    out["segments"] = page_vectors.clone()  # (S, 384)
                    out["segment_bytes"] = torch.tensor(page_bounds, dtype=torch.int64)  # (S, 2)
        return pages

    def read_page(self, page: ContextPage, max_new_tokens: int = 512) -> str:
        """What the memory holds of one page. An optical tier with a cell reader is read back
        cell by cell from its cached tokens (ReferenceModel.read_cells), cut at
        ``max_new_tokens`` bytes at a character boundary; otherwise the decoder reads it."""
        if page.tier != "text" and self.config.cell_slots:
            return self.read_tokens(page)[:max_new_tokens].decode("utf-8", errors="ignore")
        with torch.inference_mode():
            memory = self.model.pack([self.page_kv(page)], [self.page_span(page)])
            ids, _ = self.model.generate(read_prompt(), memory, max_new_tokens)
        return decode(ids)

    def read_tokens(self, page: ContextPage) -> bytes:
        """An optical page's cell read-back (read_page), UTF-8: as encode stored it, else its
        cached tokens through the cell reader, the cells assembled into lines
        (processing_reference.assemble)."""
        tensors = page.tensors or {}
        tokens = tensors.get("tokens")
        if page.tier not in self.tier_tokens or (tokens is None and "read" not in tensors):
            raise ValueError(f"{page.label}: no cached 'tokens' for tier {page.tier!r}")
        T = self.tier_tokens[page.tier]
        if tokens is not None and tuple(tokens.shape) != (T, self.config.d_model):
            raise ValueError(
                f"{page.label}: cached tokens are {tuple(tokens.shape)}, tier {page.tier!r} of "
                f"{self.version} expects ({T}, {self.config.d_model})"
            )
        if "read" in tensors:  # read at ingest from these very tokens (encode)
            return bytes(tensors["read"].tolist())
        assert tokens is not None
        return self._read_cells(tokens)

    def _read_cells(self, tokens: torch.Tensor) -> bytes:
        """(T, D) cached tokens -> the page's cell read-back, UTF-8: from the stored fp16
        tokens, under the encoder's autocast, at ingest and at read time alike."""
        with torch.inference_mode(), self._autocast():
            cells = self.model.read_cells(tokens[None].to(self.device, torch.float32))[0]
        return assemble(cells, int(round(tokens.shape[0] ** 0.5))).encode("utf-8")

    def readable(self, page: ContextPage) -> ContextPage:
        """The page as the copy path reads it: an optical page of weights with a cell reader
        carries its read-back as its text (the text tier and other pages are returned as
        they are). The answer is then copied from what the memory reads at that tier."""
        if page.tier == "text" or not self.config.cell_slots or page.text is not None:
            return page
        if not page.tensors or not ({"read", "tokens"} & set(page.tensors)):
            return page  # nothing to read it from: the copy path skips it
        text = self.read_tokens(page).decode("utf-8", errors="replace")
        return replace(page, text=text)

    def answer(self, question: str, pages: list[ContextPage], max_new_tokens: int = 128) -> Answer:
        """The answer is copied from the text tier: the best span of any text-tier page by the
        copy path (ReferenceModel.best_span), or NOT_FOUND when "no answer" scores higher or no
        page has text (the text tier, or an optical page's cell read-back: readable). Page
        scores are the start distribution's mass per page, the span's page first."""
        if not self.config.span_head:  # the byte decoder: one path, streamed or not
            return drain(self.answer_stream(question, pages, max_new_tokens))
        if self.config.cell_slots:  # optical pages are read back, then copied from like text
            pages = [self.readable(p) for p in pages]
        with torch.inference_mode():
            packed = self.packed(pages)
            memory = packed.memory
            if self.extractor is not None and packed.segment_at:
                if (query := aggregate.parse(question)) is not None:
                    if (combined := self._aggregate(query, pages, packed)) is not None:
                        return combined
                return self._extract(question, pages, packed)
            bias = self.segment_bias(question, packed)
            found, prob, scores = self.model.best_span(ask_prompt(question), memory, bias=bias)
        page_scores = [float(s) for s in scores]
        if found is None:
            return Answer(text=NOT_FOUND, page_scores=page_scores, found=False)
        start, end = found
        assert memory.span_page is not None
        i = int(memory.span_page[start])
        first = packed.first_byte[i]  # the page's first byte in the memory
        data = (pages[i].text or "").encode("utf-8")
        a, b = whole_words(data, start - first, end - first + 1)
        text = data[a:b].decode("utf-8", errors="replace").strip().rstrip(".,;:")
        page_scores[i] = max(page_scores[i], 1.0 + prob)  # the page the answer was copied from
        return Answer(text=" ".join(text.split()), page_scores=page_scores, found=True)

    def answer_stream(
        self, question: str, pages: list[ContextPage], max_new_tokens: int = 128
    ) -> Generator[str, None, Answer]:
        """Weights without the copy path (no span head) decode the answer byte by byte: each
        character is yielded as soon as its last byte is generated. The copy path finds its
        span in one step, so it yields the whole answer once (Backend's default)."""
        if self.config.span_head:
            return (yield from super().answer_stream(question, pages, max_new_tokens))
        with torch.inference_mode():
            memory = self.packed(pages).memory
        steps = self.model.decode_steps([ask_prompt(question)], memory, [max_new_tokens])
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # as decode() does
        while True:
            try:
                byte = next(steps)[0]
            except StopIteration as done:
                ids, scores = done.value
                break
            if byte is not None and 0 <= byte < 256:  # decode() drops special tokens too
                piece = utf8.decode(bytes([byte]))
                if piece:
                    yield piece
        if tail := utf8.decode(b"", final=True):
            yield tail
        return Answer(text=decode(ids[0]), page_scores=[float(s) for s in scores[0]])

    def _aggregate(
        self, query: aggregate.Query, pages: list[ContextPage], packed: Packed
    ) -> Answer | None:
        """A count, comparison, superlative or sum over per-page facts (kb.aggregate), each fact
        copied by the reader from its own page. None where the memory does not hold what it
        needs: the ordinary copy path answers instead."""

        def ask(question: str, page: int) -> str | None:
            got = self._extract(question, pages, packed, only=page)
            return got.text if got.found else None

        texts = [p.text for p in pages]  # the text tier, or an optical page's read-back
        result = aggregate.answer(query, texts, ask)
        if result is None:
            return None
        page_scores = [0.0] * len(pages)
        for rank, i in enumerate(result.pages):  # the deciding page first, then the others
            page_scores[i] = max(page_scores[i], 2.0 if rank == 0 else 1.0)
        return Answer(result.text, page_scores, found=True)

    @property
    def extractor(self) -> fine.SpanExtractor | None:
        """The copy path's fine stage, loaded on first use; None where there is none."""
        if self._extractor is None and self._extractor_path is not None:
            with self._extractor_lock:
                if self._extractor is None:
                    reader = fine.SpanExtractor(self._extractor_path)
                    if self.answer_threshold is not None:
                        reader.threshold = self.answer_threshold
                    self._extractor = reader
        return self._extractor

    def _extract(
        self, question: str, pages: list[ContextPage], packed: Packed, only: int | None = None
    ) -> Answer:
        """The two-stage copy path: every segment of the memory's text pages scored against the
        question (segment_scores), the reader (extractor.py) over the windows of the TOP best,
        the answer copied from the window whose best span beats "no answer" by most. Page
        scores: per page, how far its best window clears the threshold (a sigmoid; 0 for a page
        with no window that answers, so it is not cited), the answer's page first. ``only``:
        page ``only`` alone is read."""
        assert self.extractor is not None
        windows = self.reading_windows(question, pages, packed, only=only)
        if not windows:  # the question names codes or numbers that no page names
            return Answer(NOT_FOUND, [0.0] * len(pages), found=False)
        got = self.extractor.extract(question, [w.text for w in windows])
        threshold = self.extractor.threshold
        page_scores = [0.0] * len(pages)  # only pages with a window that answers are cited
        for e in got:
            if e.score > threshold:
                i = windows[e.window].page
                page_scores[i] = max(page_scores[i], 1 / (1 + math.exp(threshold - e.score)))
        best = max(got, key=lambda e: e.score)
        if best.score <= threshold:
            return Answer(NOT_FOUND, page_scores, found=False, score=best.score)
        if PAGE_PRIOR and len(packed.page_terms) > 1 and only is None:
            # Among the windows that answer, the reader's score plus a share of the page's: the
            # share of the question's rare words its page holds (as BERTserini adds its
            # retriever's score to its reader's). Hundreds of memos say "Questions should be
            # directed to ..."; only one is the memo of the sender the question names.
            share = lexical_scores_of_sets(question, self.read_terms(question, packed)[1])
            order = {i: j for j, i in enumerate(packed.first_byte)}  # page -> its page_terms

            def combined(e: fine.Extracted) -> float:
                return e.score + PAGE_PRIOR * float(share[order[windows[e.window].page]])

            best = max((e for e in got if e.score > threshold), key=combined)
        w = windows[best.window]
        if w.read:  # an optical read-back's window, corrected: the answer is copied from it
            text, (a, b) = w.text, (best.start, best.end)
        else:
            text = pages[w.page].text or ""
            a, b = w.to_page(best.start, best.end)
        data = text.encode("utf-8")
        a, b = whole_words(data, len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8")))
        span = data[a:b].decode("utf-8", errors="replace").strip().rstrip(".,;:")
        page_scores[w.page] += 1.0  # the page the answer was copied from
        return Answer(" ".join(span.split()), page_scores, found=True, score=best.score)

    def reading_windows(
        self,
        question: str,
        pages: list[ContextPage],
        packed: Packed,
        top: int = fine.TOP,
        only: int | None = None,
    ) -> list[fine.Window]:
        """Stage 1 of the two-stage copy path: the windows (extractor.window) of the ``top``
        best-scoring segments (segment_scores), best first, each window once (the lines of a
        memo's header share one). Where the question names codes or numbers (embed.identifiers),
        only the pages that name the most of them are read, and none where no page names any.
        ``only``: read page ``only`` alone (the symbolic step's one-page questions)."""
        scores = self.segment_scores(question, packed)
        if only is not None:
            on_page = torch.tensor([i == only for i, _ in packed.segment_at], dtype=torch.bool)
            scores = scores.masked_fill(~on_page, float("-inf"))
        if self.identifiers and (wanted := identifiers(question)):
            named = {i: sum(k in key for k in wanted) for i, key in packed.page_keys.items()}
            most = max(named.values(), default=0)
            if most == 0:
                return []
            keep = torch.tensor([named[i] == most for i, _ in packed.segment_at])
            scores = scores.masked_fill(~keep, float("-inf"))
        order = torch.argsort(scores, descending=True).tolist()
        windows: list[fine.Window] = []
        seen: set[tuple[int, str]] = set()

        def take(candidates: list[int], n: int) -> None:
            for s in candidates:
                if len(windows) >= n or scores[s] == float("-inf"):
                    break
                i, k = packed.segment_at[s]
                w = fine.window(i, pages[i].text or "", packed.page_segments[i], k)
                if i in packed.read_pages:  # a faded page as read: the question's words spelt
                    w = replace(w, text=correct_read(question, w.text), read=True)
                if (i, w.text) not in seen:
                    seen.add((i, w.text))
                    windows.append(w)

        take(order, top)
        if PAGE_FIRST and len(packed.page_terms) > 1 and only is None:
            # The page that holds the most of the question's rare words, read at its best
            # windows too: a memo's sender is named in its header, the words that pick the memo
            # are in its subject, and the sentence that answers is one that hundreds of pages
            # share (docs/benchmarks.md, "Stage 1 reads the best page").
            page = lexical_scores_of_sets(question, self.read_terms(question, packed)[1])
            best = int(torch.argmax(page))
            on_best = (packed.segment_page == best).tolist()  # one list, not a tensor per segment
            take([s for s in order if on_best[s]], top + PAGE_FIRST)
        return windows

    # --- helpers ---

    def packed(self, pages: list[ContextPage]) -> Packed:
        """The pages packed into one memory, with what the question scorer needs. The last
        packing is kept (with the tensors it was built from, so its key stays unique): asking
        again over the same pages, the usual case, skips the pack, which at 1,000 pages is most
        of a question's time (a 0.5 GB fp32 copy of the cached fp16 keys and values)."""
        key = tuple(
            (p.document_id, p.page, p.tier, id(p.tensors) if p.tensors else p.text) for p in pages
        )
        with self._packed_lock:
            if self._last_packed is not None and self._last_packed.key == key:
                return self._last_packed
        spans = [self.page_span(page) for page in pages]
        # Questions copy spans (start and end keys); the read pointer's keys serve read-backs
        # (read_page), so they stay out of a question's pack: a third less to copy.
        starts_ends = [None if sp is None else (sp[0][:2], *sp[1:]) for sp in spans]
        memory = self.model.pack([self.page_kv(page) for page in pages], starts_ends)
        first_byte: dict[int, int] = {}
        offset = 0
        sets: list[set[str]] = []  # per segment of every text page: its content words
        embeddings: list[torch.Tensor] = []  # per segment: its embedding, NaN where not cached
        byte_seg: list[torch.Tensor] = []
        segment_at: list[tuple[int, int]] = []
        page_segments: dict[int, list[tuple[int, int]]] = {}
        page_keys: dict[int, str] = {}
        read_pages: set[int] = set()
        read_words: dict[str, list[int]] = {}
        page_terms: list[set[str]] = []
        segment_page: list[int] = []
        for i, (page, span) in enumerate(zip(pages, spans, strict=True)):
            if span is None and (page.tier == "text" or page.text is None):
                continue  # no span keys, and not an optical page with its read-back
            # An optical page with its read-back (readable) has segments for the two-stage copy
            # path, and no bytes in the memory for the one-stage one.
            page_terms.append(set())
            first_byte[i] = offset
            n = 0 if span is None else span[0].shape[1]
            offset += n
            text = page.text or ""
            data = text.encode("utf-8")
            bounds = segments(text)
            page_segments[i] = char_segments(text)
            page_keys[i] = identifier_key(text)
            index = torch.full((n,), -1, dtype=torch.long)
            if page.tier != "text":
                read_pages.add(i)
            for k, (a, b) in enumerate(bounds):
                segment_at.append((i, k))
                segment_page.append(len(page_terms) - 1)
                index[a:b] = len(sets)
                sets.append(set(terms(data[a:b].decode("utf-8", "replace"))))
                page_terms[-1] |= sets[-1]
                if page.tier != "text":
                    for word in sets[-1]:
                        read_words.setdefault(word, []).append(len(sets) - 1)
            if span is not None:
                byte_seg.append(index)
            tensors = page.tensors or {}
            cached = tensors.get("segment_bytes")
            if cached is not None and cached.tolist() == [list(x) for x in bounds]:
                embeddings.append(tensors["segments"].float())
            elif bounds:
                embeddings.append(torch.full((len(bounds), EMBED_DIM), float("nan")))
        packed = Packed(
            key=key,
            keep=[p.tensors for p in pages],
            memory=memory,
            first_byte=first_byte,
            segment_terms=sets,
            segments=torch.cat(embeddings) if embeddings else torch.zeros(0, EMBED_DIM),
            byte_segment=torch.cat(byte_seg) if byte_seg else torch.zeros(0, dtype=torch.long),
            segment_at=segment_at,
            page_segments=page_segments,
            page_terms=page_terms,
            segment_page=torch.tensor(segment_page, dtype=torch.long),
            page_keys=page_keys,
            read_pages=read_pages,
            read_words=read_words,
        )
        with self._packed_lock:
            self._last_packed = packed
        return packed

    def segment_bias(self, question: str, packed: Packed) -> torch.Tensor | None:
        """Per byte of the text-tier pages, in memory order (P,), added to the copy path's start
        and end logits: config.span_lexical * the lexical score of the byte's segment (as in
        training), plus, with a scorer, SEGMENT_WEIGHT * (the question's cosine with the
        segment - SEGMENT_FLOOR). Bytes outside any segment get 0 and the floor's share."""
        if not self.config.span_head or len(packed.byte_segment) == 0:
            return None
        score = self.segment_scores(question, packed)
        outside = -SEGMENT_WEIGHT * SEGMENT_FLOOR if self.scorer is not None else 0.0
        score = torch.cat([score, torch.tensor([outside])])  # index -1: outside any segment
        return score[packed.byte_segment]

    def read_terms(self, question: str, packed: Packed) -> tuple[list[set[str]], list[set[str]]]:
        """The content words of the memory's segments and pages as the question's lexical score
        sees them: where a page is an optical read-back, its words that stand for the question's
        (embed.read_as: "proect" for "project") count as the question's words."""
        if not packed.read_words:
            return packed.segment_terms, packed.page_terms
        if packed._read_terms and packed._read_terms[0] == question:
            return packed._read_terms[1], packed._read_terms[2]
        segment_terms, page_terms = list(packed.segment_terms), list(packed.page_terms)
        segment_page = packed.segment_page.tolist()
        for word, wanted in read_as(question, list(packed.read_words)).items():
            if word != wanted:
                for k in packed.read_words[word]:
                    segment_terms[k] = segment_terms[k] | {wanted}
                    page_terms[segment_page[k]] = page_terms[segment_page[k]] | {wanted}
        packed._read_terms = (question, segment_terms, page_terms)
        return segment_terms, page_terms

    def segment_scores(self, question: str, packed: Packed) -> torch.Tensor:
        """Per segment of the memory's text pages (S,): config.span_lexical * (the share of the
        question's rare words it holds + PAGE_LEXICAL_WEIGHT * the share its page holds), plus,
        with a scorer, SEGMENT_WEIGHT * (the question's cosine with it - SEGMENT_FLOOR)."""
        segment_terms, page_terms = self.read_terms(question, packed)
        lexical = lexical_scores_of_sets(question, segment_terms)  # (S,)
        if PAGE_LEXICAL_WEIGHT and len(lexical):
            page = lexical_scores_of_sets(question, page_terms)  # (pages,)
            lexical = lexical + PAGE_LEXICAL_WEIGHT * page[packed.segment_page]
        score = self.config.span_lexical * lexical
        if self.scorer is not None and len(score):
            q = self.scorer.embed([question])[0]  # (384,)
            cos = packed.segments @ q  # (S,), NaN where a page has no cached embeddings
            score = score + SEGMENT_WEIGHT * torch.nan_to_num(cos - SEGMENT_FLOOR, nan=0.0)
        return score

    def page_span(self, page: ContextPage) -> SpanKeysOf | None:
        """A text-tier page's span keys (K, n, Ds), real-byte mask (n,) and byte ids (n,);
        None for a vision tier."""
        if page.tier != "text" or not self.config.span_head:
            return None
        if page.text is None:
            raise ValueError(f"{page.label}: a text-tier page needs page.text")
        tensors = page.tensors if page.tensors and "span" in page.tensors else None
        if tensors is None:
            tensors = self.encode_text([page.text])[0]
            page.tensors = tensors  # page_kv reuses it
        span = tensors["span"]
        ids = text_to_ids(page.text, self.config.text_bytes_per_token)  # what span was keyed from
        return span, ids != PAD, ids

    def page_kv(self, page: ContextPage) -> torch.Tensor:
        """The page's cross-attention kv (L, 2, T, D): cached, or (text tier) computed."""
        L, D = self.config.n_layers, self.config.d_model
        with torch.inference_mode():
            if page.tier == "text":
                if page.text is None:
                    raise ValueError(f"{page.label}: a text-tier page needs page.text")
                if page.tensors and "kv" in page.tensors:
                    return page.tensors["kv"]
                page.tensors = self.encode_text([page.text])[0]
                return page.tensors["kv"]
            if page.tier not in self.tier_tokens:
                raise ValueError(f"{page.label}: unknown tier {page.tier!r}")
            tensors = page.tensors or {}
            T = self.tier_tokens[page.tier]
            if "kv" in tensors:
                kv = tensors["kv"]
                if tuple(kv.shape) != (L, 2, T, D):
                    raise ValueError(
                        f"{page.label}: cached kv is {tuple(kv.shape)}, tier {page.tier!r} of "
                        f"{self.version} expects ({L}, 2, {T}, {D})"
                    )
                return kv
            if "tokens" in tensors:  # a cache that keeps only tokens: the kv is one matmul away
                tokens = tensors["tokens"]
                if tuple(tokens.shape) != (T, D):
                    raise ValueError(
                        f"{page.label}: cached tokens are {tuple(tokens.shape)}, tier "
                        f"{page.tier!r} expects ({T}, {D})"
                    )
                return self.model.page_kv(tokens.to(self.device, torch.float32))
            raise ValueError(f"{page.label}: no cached 'kv' or 'tokens' for tier {page.tier!r}")
