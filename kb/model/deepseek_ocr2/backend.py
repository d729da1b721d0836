"""The deepseek-ocr2 backend: DeepSeek-OCR 2 through transformers' native model, from a local dir.

Loading. ``KB_MODEL_PATH`` is a directory laid out like the transformers-format checkpoint
(deepseek-community/DeepSeek-OCR-2: ``config.json`` with ``model_type: deepseek_ocr2``, safetensors
weights, processor and tokenizer files). bf16 on a GPU, fp32 on a CPU. Nothing is downloaded.

Tiers. DeepSeek-OCR 2 reads a page through learned queries: 256 for a 1024 px view, 144 for a
768 px view (query banks fixed in the weights), then one view-separator embedding; dense pages may
add 768 px crops (2 x 2 for a square page, 144 queries each). The project's tiers map onto those
native modes, and ``tier_tokens`` is exactly what the decoder sees per page:

| tier  | render it gets | model view                         | decoder tokens per page     |
|-------|----------------|------------------------------------|-----------------------------|
| base  | 1024 x 1024    | global 1024 view + separator       | 257                         |
| small | 640 x 640      | global 768 view (upscaled, as the processor would) + separator | 145 |
| tiny, gist | -         | no native mode under 144 queries   | not offered                 |

Dense base pages (ink covers >= ``dense_ink`` of the page) also get their four 768 px crops encoded
and cached beside the global view ("crops", 576 tokens). Asking never uses them, so token counts
stay exact and the packer fits more pages; page read-back uses them (crops + global + separator,
833 tokens, DeepSeek's own layout), where one page's fidelity is the point.

Cached tensors per page per tier (bf16): ``{"global": (Q, D)}`` and, for dense base pages,
``{"crops": (4 * 144, D)}``; D is the decoder's hidden size (the features after the projector).

Asking. One prompt: BOS, then per page a marker ``<--- {label} --->`` as text followed by the
page's cached features, then the question. The features go in through the model's own
``mm_encoder_outputs`` path (the same scatter into image-token positions that pixels take).
Greedy decoding with DeepSeek's repetition guard (no repeated 20-gram within the last 50
tokens, their PDF recipe). Citations: attention mass. At every decoding step, the attention
of the position that predicts the next token, averaged over heads and layers, summed over each
page's feature span; a page's score is its share of the mass that went to all pages (sums to 1).
Richer tiers have more positions and so draw more mass at equal attention per token.

Cache-Augmented Generation. The packed pages are a prefix that does not depend on the question:
its key-value cache is computed once and kept (a small LRU keyed by a digest of every page's
label, tier and tensor bytes); each answer appends the question and its tokens, then the cache
is cropped back to the prefix. Any change to the page set, a tier or a page's tensors changes the
key, so a stale prefix is never reused.

Context. The decoder has a hard window (``max_position_embeddings``). ``context_limit`` is the most
vision tokens any packing may take so that the markers, the question (up to 256 tokens, longer
questions keep their end) and the answer (128 tokens) still fit; the reader caps every budget at it.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    AttentionInterface,
    AutoProcessor,
    DeepseekOcr2ForConditionalGeneration,
    DeepseekOcr2Processor,
)
from transformers.cache_utils import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling

from kb.model.base import Answer, Backend, ContextPage, PageTensors, drain
from kb.model.deepseek_ocr2.random_init import RANDOM_INIT_FILE

log = logging.getLogger(__name__)

MODEL_TYPE = "deepseek_ocr2"  # config.json's model_type of the transformers-format checkpoint
# Bump when what encode() stores changes for the same weights: it is part of the version.
RECIPE = "kb-deepseek-ocr2/1"

VIEW_SIZE = {"base": 1024, "small": 768}  # the model's two native global views (query banks)
SAM_DOWNSAMPLE = 4  # the SAM neck's two stride-2 convolutions: 16 px patches -> 64 px cells
TILE_QUERIES = 144  # a 768 px crop: 12 x 12 cells -> the 144-query bank
DENSE_INK = 0.05  # ink fraction from which a page counts as dense (~a full page of 12 pt text)

PAGE_MARKER = "<--- {label} --->\n"  # after DeepSeek's own "<--- Page Split --->"
MARKER_TOKENS = 32  # a marker's room in the context; longer labels are cut
QUESTION_TOKENS = 256  # the question's room; a longer question keeps its last 256 tokens
ANSWER_TOKENS = 128  # the answer's room: answer()'s default max_new_tokens
TEMPLATE_TOKENS = 4  # BOS and the newline before the question, with slack
OCR_PROMPT = "\nFree OCR."  # DeepSeek's plain-OCR prompt (it follows the image)
NO_REPEAT_NGRAM, NO_REPEAT_WINDOW = 20, 50  # DeepSeek's repetition guard (their PDF recipe)
PREFIX_CACHE_ENTRIES = 2  # packed-page prefixes kept (each up to ~0.5 GB of kv in bf16 at 8k)


# --- attention mass per page, recorded inside the decoder's attention ---


class _PageMass:
    """Sums, over the decoder's layers and heads, the attention that the last query position of
    each forward pass pays to each page's span of key positions."""

    def __init__(self, spans: list[tuple[int, int]], device: torch.device):
        self.starts = torch.tensor([s for s, _ in spans], dtype=torch.long, device=device)
        self.ends = torch.tensor([e for _, e in spans], dtype=torch.long, device=device)
        self.mass = torch.zeros(len(spans), dtype=torch.float32, device=device)

    def add(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: Any,
        scaling: float,
    ) -> None:
        # query (1, H, 1, hd): the last position; key (1, Hkv, L, hd). Grouped-query heads share
        # a key head: fold them into the query instead of copying the keys.
        B, Hkv, L, hd = key.shape
        query = query.reshape(B, Hkv, -1, hd)  # (1, Hkv, H / Hkv, hd)
        scores = (query.float() @ key.float().transpose(-1, -2)) * scaling  # (1, Hkv, G, L)
        if isinstance(mask, torch.Tensor):
            last = mask[..., -1:, :L]  # (1, 1, 1, L) broadcasts over the heads
            scores = (
                scores.masked_fill(~last, float("-inf"))
                if last.dtype == torch.bool
                else (scores + last.float())
            )
        weights = scores.softmax(-1).mean(dim=(0, 1, 2))  # (L,)
        cumulative = torch.nn.functional.pad(weights.cumsum(0), (1, 0))  # (L + 1,)
        self.mass += cumulative[self.ends] - cumulative[self.starts]

    def shares(self) -> list[float]:
        total = float(self.mass.sum())
        return [float(m) / total if total > 0 else 0.0 for m in self.mass.tolist()]


_RECORDING: contextvars.ContextVar[_PageMass | None] = contextvars.ContextVar(
    "kb_deepseek_ocr2_page_mass", default=None
)
ATTENTION = "kb_sdpa_page_mass"  # the decoder's attention: SDPA, plus recording when asked


def _sdpa_recording_page_mass(module, query, key, value, attention_mask, **kwargs):  # type: ignore[no-untyped-def]
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    recording = _RECORDING.get()
    if recording is not None:
        recording.add(query[:, :, -1:], key, attention_mask, kwargs["scaling"])
    return output, None


AttentionInterface.register(ATTENTION, _sdpa_recording_page_mass)
# The masks SDPA needs, too: an attention unknown to the mask registry gets no mask at all, which
# silently breaks a question appended to a cached prefix (SDPA's is_causal aligns top-left).
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


# --- greedy decoding's repetition guard ---


def banned_tokens(generated: list[int], ngram: int, window: int) -> set[int]:
    """Tokens that would repeat an ``ngram``-gram already among the last ``window`` generated
    tokens (DeepSeek's NoRepeatNGramLogitsProcessor with a window)."""
    if ngram < 1 or len(generated) < ngram:
        return set()
    recent = generated[-window:]
    head = tuple(generated[len(generated) - ngram + 1 :])  # the n-1 tokens just generated
    return {
        recent[i + ngram - 1]
        for i in range(len(recent) - ngram + 1)
        if tuple(recent[i : i + ngram - 1]) == head
    }


# --- loading ---


def checkpoint_digest(path: Path, recipe: str) -> str:
    """sha256 over the encoding recipe and every config, processor, tokenizer and weights file of
    the checkpoint (names and bytes): a new checkpoint or recipe is a new version, so encodings
    never mix."""
    digest = hashlib.sha256(recipe.encode())
    files = sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".jinja"}
    )
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class CallTrace:
    """What the last answer()/read_page() did: for tests, the benchmark and logs."""

    prefix_tokens: int
    suffix_tokens: int
    new_tokens: list[int] = field(default_factory=list)
    prefix_reused: bool = False
    prefill_s: float = 0.0  # the prefix (0 when reused) and the question
    decode_s: float = 0.0


@dataclass
class _Prefix:
    cache: DynamicCache
    length: int  # positions in the cache that belong to the prefix
    spans: list[tuple[int, int]]  # each page's feature span [start, end) in the prefix


class DeepseekOcr2Backend(Backend):
    """The Backend of base.py for DeepSeek-OCR 2 (``from_pretrained`` loads a local directory)."""

    name = "deepseek-ocr2"
    image_mode = "RGB"  # its SAM and CLIP views read colour

    def __init__(
        self,
        model: DeepseekOcr2ForConditionalGeneration,
        processor: DeepseekOcr2Processor,
        version: str,
        trained: bool = True,
        dense_ink: float = DENSE_INK,
        no_repeat_ngram: int = NO_REPEAT_NGRAM,
        no_repeat_window: int = NO_REPEAT_WINDOW,
        prefix_cache_entries: int = PREFIX_CACHE_ENTRIES,
    ):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.version = version
        self.trained = trained
        self.dense_ink = dense_ink
        self.no_repeat_ngram, self.no_repeat_window = no_repeat_ngram, no_repeat_window
        self.prefix_cache_entries = prefix_cache_entries
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        config = model.config
        text: Any = config.text_config
        vision: Any = config.vision_config
        if text._attn_implementation != ATTENTION:
            model.set_attn_implementation({"text_config": ATTENTION})
        self.image_token_id = config.image_token_id
        if processor.image_token_id != self.image_token_id:
            raise ValueError(
                f"the tokenizer's image token id {processor.image_token_id} is not the model's "
                f"{self.image_token_id}: processor files and config.json do not belong together"
            )
        self.bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        eos = text.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos.discard(None)
        self.max_positions = text.max_position_embeddings
        self.hidden = text.hidden_size
        patch = vision.sam_config.patch_size
        self.view_queries = {tier: _queries(size, patch) for tier, size in VIEW_SIZE.items()}
        self.tier_tokens = {tier: q + 1 for tier, q in self.view_queries.items()}  # + separator
        limit = _context_limit(
            self.max_positions,
            min(self.tier_tokens.values()),
            MARKER_TOKENS,
            TEMPLATE_TOKENS + QUESTION_TOKENS + ANSWER_TOKENS,
        )
        self.context_limit: int | None = limit
        self.context_budget = limit
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        self.last_call: CallTrace | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        dense_ink: float = DENSE_INK,
        **kwargs: Any,
    ) -> DeepseekOcr2Backend:
        """Load a local checkpoint directory; bf16 on a GPU, fp32 on a CPU unless ``dtype``.
        ``kwargs`` go to the constructor (repetition guard, prefix cache)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no DeepSeek-OCR 2 checkpoint at {path} (no config.json); KB_MODEL_PATH must be a "
                "local directory like deepseek-community/DeepSeek-OCR-2"
            )
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(
                f"{path}: model_type is {model_type!r}, not {MODEL_TYPE!r}. This backend "
                "reads the transformers-format checkpoint (deepseek-community/DeepSeek-OCR-2); "
                "convert the remote-code one (deepseek-ai/DeepSeek-OCR-2) with transformers' "
                "convert_deepseek_ocr2_weights_to_hf.py first"
            )
        device_ = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device_.type == "cuda" else torch.float32
        started = time.monotonic()
        recipe = f"{RECIPE} dense_ink={dense_ink}"  # which pages get crops is part of it
        version = "deepseek-ocr2-" + checkpoint_digest(path, recipe)[:12]
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model: Any = DeepseekOcr2ForConditionalGeneration.from_pretrained(
            path,
            local_files_only=True,
            dtype=dtype,
            attn_implementation={"text_config": ATTENTION, "vision_config": "sdpa"},
        )
        model = model.to(device_)  # loaded on the CPU first: a device_map needs accelerate
        trained = not (path / RANDOM_INIT_FILE).exists()
        log.info(
            "loaded DeepSeek-OCR 2 from %s (%s, %s, %s) in %.1f s%s",
            path,
            version,
            device_,
            dtype,
            time.monotonic() - started,
            "" if trained else ": RANDOM weights",
        )
        return cls(model, processor, version, trained=trained, dense_ink=dense_ink, **kwargs)

    # --- Backend: encoding ---

    def encode(self, images: list[Image.Image], tier: str) -> list[PageTensors]:
        """Pages (the tier's render) -> per page {"global": (Q, D)} (+ "crops" for dense base
        pages), bf16 on the CPU."""
        if tier not in self.tier_tokens:
            raise ValueError(
                f"unknown vision tier {tier!r} for {self.name}; expected one of "
                f"{list(self.tier_tokens)}"
            )
        dense = [tier == "base" and ink_fraction(im) >= self.dense_ink for im in images]
        pages: dict[int, PageTensors] = {}
        for crops in (True, False):  # one processor call per mode
            index = [i for i, d in enumerate(dense) if d == crops]
            if index:
                encoded = self._encode([images[i] for i in index], tier, crops)
                pages.update(zip(index, encoded, strict=True))
        return [pages[i] for i in range(len(images))]

    def pixels(self, images: list[Image.Image], tier: str, crops: bool = False) -> dict[str, Any]:
        """The published preprocessing for a tier: pixel_values (B, 3, S, S) at the tier's view,
        and with ``crops`` pixel_values_local (4B, 3, 768, 768) and num_local_patches; on the
        model's device and dtype."""
        size = VIEW_SIZE[tier]
        processor = self.processor.image_processor
        if (
            not crops
            and all(im.size == (size, size) for im in images)
            and processor.do_rescale
            and processor.do_normalize
        ):
            # Already the view's square (the canonical base render): the processor would only
            # rescale and normalize, on the CPU at ~10 pages/s; do that on the device instead.
            rgb = np.stack([np.asarray(im.convert("RGB")) for im in images])  # (B, S, S, 3) uint8
            x = torch.from_numpy(rgb).to(self.device).permute(0, 3, 1, 2).float()
            mean = torch.tensor(processor.image_mean, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(processor.image_std, device=self.device).view(1, 3, 1, 1)
            x = (x * processor.rescale_factor - mean) / std
            return {"pixel_values": x.to(self.dtype)}
        if crops:  # the processor's own crop mode: 1024 global + 768 tiles
            kwargs: dict[str, Any] = {"crop_to_patches": True}
        else:  # no crops: the processor's global view is then its tile_size; set it to the view
            kwargs = {"crop_to_patches": False, "tile_size": size}
        batch = processor([im.convert("RGB") for im in images], return_tensors="pt", **kwargs)
        out = {"pixel_values": batch["pixel_values"].to(self.device, self.dtype)}
        if crops:
            out["pixel_values_local"] = batch["pixel_values_local"].to(self.device, self.dtype)
            out["num_local_patches"] = batch["num_local_patches"].tolist()
        return out

    def _encode(self, images: list[Image.Image], tier: str, crops: bool) -> list[PageTensors]:
        Q = self.view_queries[tier]
        with torch.inference_mode():
            inputs = self.pixels(images, tier, crops)
            features = self.model.get_image_features(**inputs).pooler_output  # [(L + Q + 1, D)]
        pages = []
        for i, f in enumerate(features):
            local = inputs["num_local_patches"][i] * TILE_QUERIES if crops else 0
            if tuple(f.shape) != (local + Q + 1, self.hidden):
                raise ValueError(
                    f"{self.name}: a page's features are {tuple(f.shape)}, expected "
                    f"({local + Q + 1}, {self.hidden}) for tier {tier!r}"
                )
            # layout [crops, global, separator]; the separator is a weight, not cached
            tensors = {"global": f[local : local + Q].to("cpu", torch.bfloat16).clone()}
            if local:
                tensors["crops"] = f[:local].to("cpu", torch.bfloat16).clone()
            pages.append(tensors)
        return pages

    def text_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_text(self, texts: list[str]) -> list[PageTensors]:
        """Nothing to cache: the text tier goes into the prompt as the page's text."""
        return [{} for _ in texts]

    # --- Backend: reading ---

    def read_page(self, page: ContextPage, max_new_tokens: int = 512) -> str:
        """OCR of one page from its cached features: [crops,] global, separator, "Free OCR."."""
        if page.tier == "text":
            return page.text or ""
        started = time.monotonic()
        features = self.page_features(page, crops=True)
        ids = [*self.bos, *[self.image_token_id] * len(features)]
        prefix = self._prefill(ids, [features], spans=[(len(self.bos), len(ids))])
        prefix_s = time.monotonic() - started
        prompt = self._ids(OCR_PROMPT)
        # A read-back is as long as the page: at most what the window leaves, whatever is asked.
        room = self.max_positions - prefix.length - len(prompt)
        new, _ = self._decode(
            prefix, prompt, max(1, min(max_new_tokens, room)), False, prefix_s, scores=False
        )
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    def answer(self, question: str, pages: list[ContextPage], max_new_tokens: int = 128) -> Answer:
        return drain(self.answer_stream(question, pages, max_new_tokens))

    def answer_stream(
        self, question: str, pages: list[ContextPage], max_new_tokens: int = 128
    ) -> Generator[str, None, Answer]:
        """The answer as the decoder generates it: after each token, the text it added (none
        while a character is cut between tokens), the leading space stripped as the answer's;
        what was held back, at the end."""
        started = time.monotonic()
        prefix, reused = self._packed_prefix(pages)
        prefix_s = 0.0 if reused else time.monotonic() - started
        steps = self._decode_steps(
            prefix, self._question_ids(question), max_new_tokens, reused, prefix_s
        )
        new: list[int] = []
        sent = ""  # the text yielded so far
        while True:
            try:
                new.append(next(steps))
            except StopIteration as done:
                new, scores = done.value
                break
            # Decoded whole each time (at most ANSWER_TOKENS tokens): a token's text depends on
            # the tokens before it (merged spaces, bytes of one character).
            text = self.tokenizer.decode(new, skip_special_tokens=True).lstrip()
            if text.startswith(sent) and not text.endswith("\ufffd") and len(text) > len(sent):
                yield text[len(sent) :]
                sent = text
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        if text.startswith(sent) and len(text) > len(sent):  # what was held back at the end
            yield text[len(sent) :]
        return Answer(text=text, page_scores=scores)

    def next_token_logits(self, question: str, pages: list[ContextPage]) -> torch.Tensor:
        """The logits (vocab,) of the answer's first token, through the same cached prefix path
        that answer() takes (tests compare them with the pixel path)."""
        prefix, _ = self._packed_prefix(pages)
        suffix = self._question_ids(question)
        try:
            with torch.inference_mode():
                out = self.model(
                    input_ids=self._tensor(suffix),
                    past_key_values=prefix.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            return out.logits[0, -1].float()
        finally:
            self._crop(prefix)

    def prompt_ids(self, question: str, pages: list[ContextPage]) -> list[int]:
        """The whole prompt as token ids, image-token placeholders where the features go."""
        ids, _, _ = self._layout(pages)
        return ids + self._question_ids(question)

    def page_features(self, page: ContextPage, crops: bool = False) -> torch.Tensor:
        """The page's decoder inputs (T, D): [crops (read-back of dense pages),] global view,
        separator; from its cached tensors, checked against the tier's shape."""
        if page.tier not in self.tier_tokens:
            raise ValueError(
                f"{page.label or 'page'}: tier {page.tier!r} is not one of {self.name}'s "
                f"{list(self.tier_tokens)}"
            )
        tensors = page.tensors or {}
        Q = self.view_queries[page.tier]
        glob = tensors.get("global")
        if glob is None or tuple(glob.shape) != (Q, self.hidden):
            found = None if glob is None else tuple(glob.shape)
            raise ValueError(
                f"{page.label or 'page'}: cached 'global' is {found}, tier {page.tier!r} of "
                f"{self.version} expects ({Q}, {self.hidden})"
            )
        parts = [glob]
        if crops and "crops" in tensors:
            parts.insert(0, tensors["crops"])
        separator = self.model.model.view_separator.detach()[None]  # (1, D)
        return torch.cat(
            [p.to(self.device, self.dtype) for p in parts] + [separator.to(self.dtype)]
        )

    # --- the prompt ---

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _tensor(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def _marker_ids(self, label: str) -> list[int]:
        before, after = PAGE_MARKER.split("{label}")
        frame = self._ids(before), self._ids(after)
        room = MARKER_TOKENS - len(frame[0]) - len(frame[1])
        return frame[0] + self._ids(label)[: max(room, 0)] + frame[1]

    def _question_ids(self, question: str) -> list[int]:
        ids = self._ids(question)
        if len(ids) > QUESTION_TOKENS:
            log.warning("question of %d tokens: keeping its last %d", len(ids), QUESTION_TOKENS)
            ids = ids[-QUESTION_TOKENS:]
        return self._ids("\n") + ids + self._ids("\n")

    def _layout(
        self, pages: list[ContextPage]
    ) -> tuple[list[int], list[torch.Tensor], list[tuple[int, int]]]:
        """BOS, then per page its marker and its features (image-token placeholders)."""
        ids, features, spans = list(self.bos), [], []
        for page in pages:
            ids += self._marker_ids(page.label)
            if page.tier == "text":  # the packer never asks for it here, but it reads fine
                text = self._ids(page.text or "")
                spans.append((len(ids), len(ids) + len(text)))
                ids += text
                continue
            f = self.page_features(page)
            spans.append((len(ids), len(ids) + len(f)))
            ids += [self.image_token_id] * len(f)
            features.append(f)
        return ids, features, spans

    # --- prefill, the prefix cache, decoding ---

    def _packed_prefix(self, pages: list[ContextPage]) -> tuple[_Prefix, bool]:
        key = _pages_digest(pages)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key], True
        ids, features, spans = self._layout(pages)
        prefix = self._prefill(ids, features, spans)
        if self.prefix_cache_entries > 0:
            self._prefixes[key] = prefix
            while len(self._prefixes) > self.prefix_cache_entries:
                self._prefixes.popitem(last=False)
        return prefix, False

    def _prefill(
        self, ids: list[int], features: list[torch.Tensor], spans: list[tuple[int, int]]
    ) -> _Prefix:
        if len(ids) > self.max_positions:
            raise ValueError(
                f"{self.name}: the packed pages take {len(ids)} positions, more than the "
                f"model's {self.max_positions}"
            )
        cache = DynamicCache(config=self.model.config.text_config)
        # pooler_output: one (T, D) per image, the layout get_image_features returns
        encoder_outputs = {"image": BaseModelOutputWithPooling(pooler_output=features)}  # type: ignore[arg-type]
        with torch.inference_mode():
            self.model.model(
                input_ids=self._tensor(ids),
                mm_encoder_outputs=encoder_outputs if features else None,
                past_key_values=cache,
                use_cache=True,
            )
        return _Prefix(cache=cache, length=len(ids), spans=spans)

    def _decode(
        self,
        prefix: _Prefix,
        suffix: list[int],
        max_new_tokens: int,
        reused: bool,
        prefix_s: float,
        scores: bool = True,
    ) -> tuple[list[int], list[float]]:
        """``_decode_steps`` run to its end: the new tokens and the page scores."""
        return drain(self._decode_steps(prefix, suffix, max_new_tokens, reused, prefix_s, scores))

    def _decode_steps(
        self,
        prefix: _Prefix,
        suffix: list[int],
        max_new_tokens: int,
        reused: bool,
        prefix_s: float,
        scores: bool = True,
    ) -> Generator[int, None, tuple[list[int], list[float]]]:
        """Greedy: the suffix, then one token at a time, with the repetition guard, yielding
        each new token; returns them all and the page scores. The cache is cropped back to the
        prefix afterwards, whatever happens (closed early too). ``prefix_s``: what computing
        the prefix took (0 when ``reused``). Inference mode and the attention recording are
        entered per step, never held across a yield."""
        total = prefix.length + len(suffix) + max_new_tokens
        if total > self.max_positions:
            raise ValueError(
                f"{self.name}: {prefix.length} prefix + {len(suffix)} question + "
                f"{max_new_tokens} answer positions exceed the model's {self.max_positions}"
            )
        trace = CallTrace(prefix.length, len(suffix), prefix_reused=reused)
        started = time.monotonic()
        mass = _PageMass(prefix.spans, self.device) if scores else None
        new: list[int] = []
        try:
            ids = self._tensor(suffix)
            for step in range(max_new_tokens):
                token = _RECORDING.set(mass)
                try:
                    with torch.inference_mode():
                        out = self.model(
                            input_ids=ids,
                            past_key_values=prefix.cache,
                            use_cache=True,
                            logits_to_keep=1,
                        )
                        logits = out.logits[0, -1].float()
                        banned = banned_tokens(new, self.no_repeat_ngram, self.no_repeat_window)
                        if banned:
                            logits[list(banned)] = float("-inf")
                        next_id = int(logits.argmax())  # waits for the device: timings are real
                finally:
                    _RECORDING.reset(token)
                if step == 0:  # the question's pass: the end of prefill
                    trace.prefill_s = time.monotonic() - started
                if next_id in self.eos:
                    break
                new.append(next_id)
                ids = self._tensor([next_id])
                yield next_id
        finally:
            self._crop(prefix)
        trace.decode_s = time.monotonic() - started - trace.prefill_s
        trace.prefill_s += prefix_s
        trace.new_tokens = new
        self.last_call = trace
        return new, (mass.shares() if mass is not None else [])

    def _crop(self, prefix: _Prefix) -> None:
        extra = prefix.cache.get_seq_length() - prefix.length
        if extra > 0:
            prefix.cache.crop(-extra)
        if prefix.cache.get_seq_length() != prefix.length:  # never answer from a corrupt prefix
            self._forget(prefix)

    def _forget(self, prefix: _Prefix) -> None:
        for key, value in list(self._prefixes.items()):
            if value is prefix:
                del self._prefixes[key]

    @contextmanager
    def prefix_cache_disabled(self) -> Iterator[None]:
        """Every answer inside computes its prefix afresh (tests compare with it)."""
        entries, self.prefix_cache_entries = self.prefix_cache_entries, 0
        saved, self._prefixes = self._prefixes, OrderedDict()
        try:
            yield
        finally:
            self.prefix_cache_entries, self._prefixes = entries, saved


# --- small pure helpers ---


def _queries(size: int, patch: int) -> int:
    """Queries the vision encoder emits for a square view: the 144-query bank up to 12 x 12
    cells, else the 256-query bank (fixed in DeepseekOcr2VisionModel)."""
    cells = (size // patch // SAM_DOWNSAMPLE) ** 2
    return 144 if cells <= 144 else 256


def _context_limit(max_positions: int, cheapest: int, marker: int, reserve: int) -> int:
    """The largest vision-token budget B such that any packing within it fits the window:
    B tokens, at most B // cheapest pages with a marker each, plus the reserve."""
    room = max_positions - reserve
    budget = room
    while budget > 0 and budget + marker * (budget // cheapest) > room:
        budget -= 1
    return max(budget, 0)


def ink_fraction(image: Image.Image) -> float:
    """Share of dark pixels (luminance < 128): how much of the page is covered by print."""
    return float((np.asarray(image.convert("L")) < 128).mean())


def _pages_digest(pages: list[ContextPage]) -> str:
    """Identity of a packed prefix: every page's label, tier and tensor bytes, in order."""
    digest = hashlib.sha256()
    for page in pages:
        digest.update(f"{page.label}\x00{page.tier}\x00{len(page.text or '')}\x00".encode())
        digest.update((page.text or "").encode())
        for name, tensor in sorted((page.tensors or {}).items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            if t.numel():
                digest.update(t.view(torch.uint8).numpy().data)  # the bytes in place, no copy
    return digest.hexdigest()
