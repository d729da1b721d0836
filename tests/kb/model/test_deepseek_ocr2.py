"""The deepseek-ocr2 backend on a tiny random DeepSeek-OCR 2, saved as a checkpoint directory and
loaded through the same code as real weights (no weights can be downloaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers.modeling_outputs import BaseModelOutputWithPooling

import ingest
from kb.model import load_backend
from kb.model.base import Backend, ContextPage, PageTensors
from kb.model.deepseek_ocr2 import DeepseekOcr2Backend
from kb.model.deepseek_ocr2.backend import (
    ANSWER_TOKENS,
    MARKER_TOKENS,
    NO_REPEAT_NGRAM,
    QUESTION_TOKENS,
    TEMPLATE_TOKENS,
    banned_tokens,
    ink_fraction,
)
from kb.model.deepseek_ocr2.random_init import save_random_checkpoint
from kb.packer import Candidate, pack
from kb.tensors import dumps, loads
from lab import bench_deepseek_ocr2 as bench

QUESTION = "Where is the supplier of optical sensors?"


def page_image(text: str, dense: bool = False) -> Image.Image:
    """A canonical 1024 x 1024 page render: a line of text, or (dense) a page full of print."""
    image = Image.new("RGB", (1024, 1024), "white")
    draw = ImageDraw.Draw(image)
    if dense:
        for y in range(20, 1000, 11):
            draw.text((10, y), (text + " ") * 12, fill="black")
        draw.rectangle((600, 600, 900, 900), fill="black")  # a figure
    else:
        draw.text((60, 60), text, fill="black")
    return image


def tier_render(image: Image.Image, tier: str) -> Image.Image:
    """What the pipeline hands the encoder: base 1024, small 640."""
    return ingest.tier_image(image, tier)


PAGES = [page_image(f"Page {i}: the Lisbon office employs {30 + i} engineers.") for i in range(3)]
DENSE = page_image("Risks. The main supplier of optical sensors is located in Osaka.", dense=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "deepseek-ocr2-tiny", seed=0)


@pytest.fixture(scope="module")
def backend(checkpoint: Path) -> DeepseekOcr2Backend:
    loaded = load_backend("deepseek-ocr2", checkpoint)  # what KB_MODEL / KB_MODEL_PATH do
    assert isinstance(loaded, DeepseekOcr2Backend)
    return loaded


@pytest.fixture(scope="module")
def encoded(backend: DeepseekOcr2Backend) -> dict[tuple[int, str], PageTensors]:
    """Every test image encoded once per tier (key: index in PAGES + [DENSE], tier)."""
    images = [*PAGES, DENSE]
    out = {}
    for tier in backend.tier_tokens:
        tensors = backend.encode([tier_render(im, tier) for im in images], tier)
        out.update({(i, tier): t for i, t in enumerate(tensors)})
    return out


def context(encoded: dict, indices: list[int], tier: str) -> list[ContextPage]:
    return [
        ContextPage("doc", n + 1, f"report.pdf p.{n + 1}", tier, tensors=encoded[i, tier])
        for n, i in enumerate(indices)
    ]


def test_loads_a_checkpoint_directory_and_reports_itself(backend, checkpoint, tmp_path):
    as_protocol: Backend = backend  # checked by mypy: Backend is a Protocol
    assert as_protocol.name == "deepseek-ocr2"
    assert backend.trained is False  # the checkpoint says its weights are random
    assert backend.version.startswith("deepseek-ocr2-")
    assert backend.dtype == torch.float32 and backend.device.type == "cpu"
    # 256 / 144 queries of the 1024 / 768 views, plus the view separator: what the decoder sees
    assert backend.tier_tokens == {"base": 257, "small": 145}
    # the budget leaves room for a marker per page, the question and the answer
    budget, cheapest = backend.context_limit, 145
    reserve = TEMPLATE_TOKENS + QUESTION_TOKENS + ANSWER_TOKENS
    assert budget == backend.context_budget > 0
    assert budget + MARKER_TOKENS * (budget // cheapest) + reserve <= backend.max_positions == 2048
    assert budget + 1 + MARKER_TOKENS * ((budget + 1) // cheapest) + reserve > 2048

    assert load_backend("deepseek-ocr2", checkpoint).version == backend.version
    other = save_random_checkpoint(tmp_path / "other", seed=1)
    assert load_backend("deepseek-ocr2", other).version != backend.version
    with pytest.raises(ValueError, match="KB_MODEL_PATH"):
        load_backend("deepseek-ocr2", None)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_backend("deepseek-ocr2", tmp_path / "missing")
    remote_code = tmp_path / "remote-code"
    remote_code.mkdir()
    (remote_code / "config.json").write_text(json.dumps({"model_type": "deepseek_vl_v2"}))
    with pytest.raises(ValueError, match="convert_deepseek_ocr2_weights_to_hf"):
        load_backend("deepseek-ocr2", remote_code)


def test_encode_caches_bf16_global_views_and_crops_of_dense_pages(backend, encoded):
    assert ink_fraction(DENSE) >= backend.dense_ink > ink_fraction(PAGES[0])
    base = [encoded[0, "base"], encoded[3, "base"]]  # encoded together, in one batch
    assert [sorted(t) for t in base] == [["global"], ["crops", "global"]]
    assert base[0]["global"].shape == (256, 64) and base[0]["global"].dtype == torch.bfloat16
    assert base[1]["crops"].shape == (4 * 144, 64) and base[1]["crops"].dtype == torch.bfloat16
    small = [encoded[0, "small"], encoded[3, "small"]]
    assert [sorted(t) for t in small] == [["global"], ["global"]]  # crops only at base
    assert small[0]["global"].shape == (144, 64)
    for tensors in base + small:
        for t in tensors.values():  # each page owns its memory: not a view of the batch
            assert t.untyped_storage().nbytes() == t.numel() * 2
        stored = loads(dumps(tensors))  # through safetensors, as the object store keeps them
        assert all(torch.equal(stored[k], v) for k, v in tensors.items())
    # a batch gives what one page at a time gives
    assert torch.equal(backend.encode([DENSE], "base")[0]["crops"], base[1]["crops"])
    assert backend.encode([], "base") == []
    with pytest.raises(ValueError, match="tier 'tiny'"):
        backend.encode([PAGES[0]], "tiny")


def test_pixels_are_the_published_preprocessing(backend):
    """The fast path for pages already at the view's size equals the processor's own output."""
    images = [PAGES[0], DENSE]
    fast = backend.pixels(images, "base")["pixel_values"]
    slow = backend.processor.image_processor(
        images, crop_to_patches=False, tile_size=1024, return_tensors="pt"
    )["pixel_values"]
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    small = backend.pixels([tier_render(PAGES[0], "small")], "small")["pixel_values"]
    assert small.shape == (1, 3, 768, 768)  # the 640 render, upscaled to the 768 view
    crops = backend.pixels([DENSE], "base", crops=True)
    assert crops["pixel_values"].shape == (1, 3, 1024, 1024)
    assert crops["pixel_values_local"].shape == (4, 3, 768, 768)
    assert crops["num_local_patches"] == [4]


@pytest.mark.parametrize(("tier", "n"), [("base", 1), ("base", 3), ("small", 3)])
def test_cached_features_give_the_logits_and_tokens_of_pixels(backend, encoded, tier, n):
    images = PAGES[:n]
    pages = context(encoded, list(range(n)), tier)
    ids = torch.tensor([backend.prompt_ids(QUESTION, pages)])
    pixels = backend.pixels([tier_render(im, tier) for im in images], tier)
    with torch.inference_mode():
        from_pixels = backend.model(input_ids=ids, **pixels).logits[0, -1]
        generated = backend.model.generate(
            input_ids=ids, **pixels, do_sample=False, max_new_tokens=12
        )[0, ids.shape[1] :].tolist()
    from_cache = backend.next_token_logits(QUESTION, pages)
    # fp32 on the CPU: the only difference is the bf16 rounding of the cached features
    torch.testing.assert_close(from_cache, from_pixels, rtol=0, atol=1e-3)
    assert from_cache.argmax() == from_pixels.argmax()
    backend.answer(QUESTION, pages, max_new_tokens=12)
    assert backend.last_call is not None
    assert backend.last_call.new_tokens == generated


def test_bf16_caching_is_lossless(checkpoint):
    """bf16, as on a GPU: the cached tensors are the model's own features, bit for bit."""
    bf16 = DeepseekOcr2Backend.from_pretrained(checkpoint, dtype=torch.bfloat16)
    pages = [ContextPage("doc", 1, "report.pdf p.1", "small", bf16.encode([PAGES[0]], "small")[0])]
    pixels = bf16.pixels([PAGES[0]], "small")
    ids = torch.tensor([bf16.prompt_ids(QUESTION, pages)])
    features = [bf16.page_features(p) for p in pages]
    with torch.inference_mode():
        own = bf16.model.get_image_features(**pixels).pooler_output
        from_pixels = bf16.model(input_ids=ids, **pixels).logits
        cached = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        from_cache = bf16.model(input_ids=ids, mm_encoder_outputs=cached).logits
    assert all(torch.equal(f, o) for f, o in zip(features, own, strict=True))
    assert torch.equal(from_cache, from_pixels)


def test_read_back_reads_dense_pages_with_their_crops(backend, encoded):
    sparse, dense = encoded[0, "base"], encoded[3, "base"]
    page = ContextPage("doc", 3, "", "base", tensors=dense)
    text = backend.read_page(page, max_new_tokens=10)
    assert isinstance(text, str) and backend.last_call is not None
    assert backend.last_call.prefix_tokens == 1 + 4 * 144 + 256 + 1  # BOS, crops, global, sep
    read = backend.last_call.new_tokens
    ids = [*backend.bos, *[backend.image_token_id] * 833, *backend.tokenizer.encode("\nFree OCR.")]
    with torch.inference_mode():
        generated = backend.model.generate(
            input_ids=torch.tensor([ids]),
            **backend.pixels([DENSE], "base", crops=True),
            do_sample=False,
            max_new_tokens=10,
        )[0, len(ids) :].tolist()
    assert read == generated  # DeepSeek's own crop layout, from the cache

    backend.read_page(ContextPage("doc", 1, "", "base", tensors=sparse), max_new_tokens=4)
    assert backend.last_call.prefix_tokens == 1 + 257
    small = encoded[3, "small"]
    backend.read_page(ContextPage("doc", 3, "", "small", tensors=small), max_new_tokens=4)
    assert backend.last_call.prefix_tokens == 1 + 145
    assert backend.read_page(ContextPage("doc", 1, "", "text", text="as typed")) == "as typed"
    with pytest.raises(ValueError, match=r"expects \(256, 64\)"):
        backend.read_page(ContextPage("doc", 1, "p", "base", tensors=small))


def test_the_packer_fits_the_context_window_and_says_what_it_left_out(backend, encoded):
    one, base = context(encoded, [0], "small")[0], context(encoded, [0], "base")[0]
    n = 14  # more pages than the tiny model's 2,048 positions hold
    candidates = [Candidate(key=i, recency=float(i)) for i in range(n)]
    packing = pack(candidates, backend.tier_tokens, backend.context_budget)
    assert packing.left_out and len(packing.chosen) + len(packing.left_out) == n
    assert packing.tokens <= backend.context_budget
    chosen = [
        ContextPage("doc", i + 1, f"a-rather-long-file-name-{i}.pdf p.{i + 1}", tier,
                    tensors=(base if tier == "base" else one).tensors)
        for i, tier in packing.chosen
    ]  # fmt: skip
    answer = backend.answer(QUESTION * 20, chosen, max_new_tokens=4)  # a long question
    assert len(answer.page_scores) == len(chosen)
    call = backend.last_call  # the pages, the question and the answer's room fit the window
    assert call is not None and call.prefix_tokens + call.suffix_tokens + ANSWER_TOKENS <= 2048

    everything = [ContextPage("doc", i + 1, f"p.{i + 1}", "small", one.tensors) for i in range(n)]
    with pytest.raises(ValueError, match="more than the model's 2048"):
        backend.answer(QUESTION, everything)


def test_repeated_questions_reuse_the_packed_pages_kv_cache(backend, encoded):
    pages = context(encoded, [0, 1, 2], "base")
    first = backend.answer("What is on these pages?", pages, max_new_tokens=8)
    assert backend.last_call is not None and not backend.last_call.prefix_reused
    prefix_tokens = backend.last_call.prefix_tokens
    second = backend.answer(QUESTION, pages, max_new_tokens=8)
    assert backend.last_call.prefix_reused
    assert backend.last_call.prefill_s < 1.0  # only the question went through the model
    with backend.prefix_cache_disabled():  # the second question, computed from scratch
        fresh = backend.answer(QUESTION, pages, max_new_tokens=8)
        assert not backend.last_call.prefix_reused
        fresh_tokens = backend.last_call.new_tokens
    assert (second.text, second.page_scores) == (fresh.text, fresh.page_scores)
    backend.answer(QUESTION, pages, max_new_tokens=8)
    assert backend.last_call.prefix_reused and backend.last_call.new_tokens == fresh_tokens
    assert backend.answer("What is on these pages?", pages, max_new_tokens=8) == first
    # the cache is cropped back to the pages after every answer
    assert all(p.cache.get_seq_length() == p.length == prefix_tokens
               for p in backend._prefixes.values() if p.length == prefix_tokens)  # fmt: skip

    # Any change to the collection is another prefix: pages, tiers, or a page's tensors.
    changed = {
        "a page less": pages[:2],
        "another tier": [*pages[:2], context(encoded, [2], "small")[0]],
        "other tensors": [*pages[:2], context(encoded, [3], "base")[0]],
    }
    for what, collection in changed.items():
        with backend.prefix_cache_disabled():
            expected = backend.answer(QUESTION, collection, max_new_tokens=8)
        got = backend.answer(QUESTION, collection, max_new_tokens=8)
        assert not backend.last_call.prefix_reused, what
        assert got == expected, what


def test_citations_are_the_attention_mass_on_each_page(checkpoint, encoded):
    """The recorded scores equal the attention weights an eager pass reports for the positions
    that predicted each answer token, summed over every page's feature span."""
    backend = DeepseekOcr2Backend.from_pretrained(checkpoint)  # switched to eager below
    pages = context(encoded, [0, 1, 2], "small")
    answer = backend.answer(QUESTION, pages, max_new_tokens=6)
    call = backend.last_call
    assert call is not None
    assert len(answer.page_scores) == 3 and abs(sum(answer.page_scores) - 1) < 1e-6
    assert all(s > 0 for s in answer.page_scores)

    steps = len(call.new_tokens) + (1 if len(call.new_tokens) < 6 else 0)  # + the EOS step
    ids = backend.prompt_ids(QUESTION, pages) + call.new_tokens[: steps - 1]
    features = [backend.page_features(p) for p in pages]
    backend.model.set_attn_implementation("eager")
    with torch.inference_mode():
        out = backend.model(
            input_ids=torch.tensor([ids]),
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
            output_attentions=True,
        )
    first = call.prefix_tokens + call.suffix_tokens - 1  # predicts the first answer token
    rows = torch.stack(out.attentions)[:, 0, :, first : first + steps]  # (layers, H, steps, L)
    weights = rows.float().mean(dim=1).sum(dim=(0, 1))  # (L,)
    _, _, spans = backend._layout(pages)
    mass = torch.stack([weights[s:e].sum() for s, e in spans])
    expected = (mass / mass.sum()).tolist()
    assert answer.page_scores == pytest.approx(expected, abs=1e-4)


def test_repetition_guard(backend, encoded):
    assert banned_tokens([1, 2, 3, 1, 2], ngram=3, window=50) == {3}
    assert banned_tokens([1, 2, 3, 1, 2], ngram=3, window=3) == set()  # 1 2 3 left the window
    assert banned_tokens([5, 5], ngram=2, window=50) == {5} and banned_tokens([5], 2, 50) == set()

    def trigram_repeats(ngram: int) -> int:
        backend.no_repeat_ngram = ngram
        try:
            backend.answer(QUESTION, context(encoded, [0], "small"), max_new_tokens=48)
        finally:
            backend.no_repeat_ngram = NO_REPEAT_NGRAM
        assert backend.last_call is not None
        tokens = backend.last_call.new_tokens
        grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
        return len(grams) - len(set(grams))

    # the random model loops under plain greedy decoding; the guard breaks the loop
    assert trigram_repeats(0) > 0
    assert trigram_repeats(3) == 0


def test_the_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--tiny", "--encode-pages", "1", "--batch", "1", "--ask-pages", "1,max"]
    result = bench.main([*args, "--new-tokens", "2", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert [r["mode"] for r in result["encode"]] == [
        "global 1024 (base)", "global 768 (small)", "global + 4 crops (dense base)"
    ]  # fmt: skip
    assert [r["tokens"] for r in result["encode"]] == [257, 145, 833]
    assert all(r["pages_per_s"] > 0 for r in result["encode"])
    one, most = result["ask"]
    assert one["pages"] == 1 and most["pages"] > 1 and most["left_out"] == 0
    assert most["positions"] <= result["max_positions"]
    for row in result["ask"]:
        assert row["first"]["prefill_ms"] > 0 and row["second"]["prefill_ms"] > 0


def test_the_answer_streams_token_by_token(backend, encoded):
    pages = context(encoded, [0, 1], "small")
    whole = backend.answer(QUESTION, pages, max_new_tokens=24)
    stream = backend.answer_stream(QUESTION, pages, max_new_tokens=24)
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            streamed = done.value
            break
    assert streamed == whole
    assert backend.last_call is not None
    assert 1 < len(pieces) <= len(backend.last_call.new_tokens)  # a piece per token at most
    assert "".join(pieces) == whole.text
    # closed after its first piece (a client gone): the packed pages' cache is cropped back
    stream = backend.answer_stream(QUESTION, pages, max_new_tokens=24)
    next(stream)
    stream.close()
    assert backend.answer(QUESTION, pages, max_new_tokens=24) == whole
