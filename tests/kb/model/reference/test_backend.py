from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from kb.embed import SentenceEmbedder
from kb.model import load_backend
from kb.model.base import NOT_FOUND, Answer, Backend, ContextPage
from kb.model.reference.backend import (
    ReferenceBackend,
    WeightsIntegrityError,
    checksum_path,
    load_model,
    random_model,
    save_weights,
    sha256_file,
    whole_words,
)
from kb.model.reference.processing_reference import assemble, utf8_tensor

from .conftest import tiny_config


def page_image(size: int, text: str) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).text((8, 8), text, fill="black")
    return image


def vision_pages(backend: ReferenceBackend, n: int, tier: str = "gist") -> list[ContextPage]:
    size = backend.config.tier_sizes[tier]
    encoded = backend.encode([page_image(size, f"page {i}") for i in range(n)], tier)
    return [
        ContextPage("doc", i + 1, f"doc p.{i + 1}", tier, tensors=tensors)
        for i, tensors in enumerate(encoded)
    ]


@pytest.fixture
def backend(config) -> ReferenceBackend:
    return ReferenceBackend(config=config)


@pytest.fixture
def weights(tmp_path, config) -> Path:
    path = tmp_path / "reference.safetensors"
    save_weights(random_model(config, seed=3), config, path, {"step": 1200, "loss": 0.5})
    return path


def test_random_init_says_so_and_has_a_stable_version(config, caplog):
    backend: Backend = ReferenceBackend(config=config)  # checked by mypy: Backend is a Protocol
    for member in ("encode", "text_tokens", "read_page", "answer", "context_budget"):
        assert hasattr(backend, member)
    assert backend.name == "reference"
    assert backend.trained is False
    assert "random initialisation" in caplog.text
    assert (
        backend.version.startswith("reference-") and len(backend.version) == len("reference-") + 12
    )
    assert ReferenceBackend(config=config).version == backend.version
    assert ReferenceBackend(config=tiny_config(n_layers=3)).version != backend.version
    assert backend.tier_tokens == {"base": 256, "small": 100, "tiny": 64, "gist": 16}


@pytest.mark.parametrize("tier", ["gist", "tiny"])
def test_encode_gives_fp16_tokens_and_kv_per_page(backend, config, tier):
    T, L, D = backend.tier_tokens[tier], config.n_layers, config.d_model
    encoded = backend.encode([page_image(config.tier_sizes[tier], "x")] * 3, tier)
    assert len(encoded) == 3
    for tensors in encoded:
        assert tensors["tokens"].shape == (T, D) and tensors["tokens"].dtype == torch.float16
        assert tensors["kv"].shape == (L, 2, T, D) and tensors["kv"].dtype == torch.float16
        assert tensors["kv"].is_contiguous() and tensors["kv"].untyped_storage().nbytes() == (
            L * 2 * T * D * 2
        )  # owns its memory: not a view of the batch
    assert backend.encode([], tier) == []


def test_encode_batches_do_not_change_the_result(config):
    one = ReferenceBackend(config=config, batch_size=1)
    many = ReferenceBackend(config=config, batch_size=4)
    images = [page_image(256, f"page {i}") for i in range(3)]
    for a, b in zip(one.encode(images, "gist"), many.encode(images, "gist"), strict=True):
        torch.testing.assert_close(a["kv"], b["kv"], atol=1e-3, rtol=0)


def test_encode_refuses_the_wrong_size(backend):
    with pytest.raises(ValueError, match="page image is 512x512 px, tier expects 256x256"):
        backend.encode([page_image(512, "x")], "gist")
    with pytest.raises(ValueError, match="unknown vision tier 'text'"):
        backend.encode([page_image(256, "x")], "text")


def test_text_tokens_are_bytes_over_four(backend):
    assert backend.text_tokens("a" * 40) == 10
    assert backend.text_tokens("a" * 41) == 11


def test_answer_scores_every_page(backend):
    pages = vision_pages(backend, 3) + [
        ContextPage("notes", 1, "notes.txt p.1", "text", text="The total is 42 EUR."),
        ContextPage("notes", 2, "notes.txt p.2", "text", text=""),
    ]
    answer = backend.answer("What is the total?", pages, max_new_tokens=8)
    assert isinstance(answer, Answer) and isinstance(answer.text, str)
    assert len(answer.page_scores) == len(pages)
    assert all(s >= 0 for s in answer.page_scores)
    # The copy path reads the text tier only: vision pages score nothing, and an answer that
    # was found is a span of a text page, which then ranks first.
    assert answer.page_scores[:3] == [0.0, 0.0, 0.0]
    if answer.found:
        assert answer.text in "The total is 42 EUR."
        assert answer.page_scores[3] > 1.0
    else:
        assert answer.text == NOT_FOUND
    empty = backend.answer("?", [], max_new_tokens=4)
    assert empty.page_scores == [] and empty.text == NOT_FOUND and not empty.found


def test_answer_copies_the_best_span_byte_for_byte(backend):
    """With the span query forced to match one byte's keys, the answer is that page's span."""
    page = ContextPage("notes", 1, "notes.txt p.1", "text", text="Code: QZ-4410 (new)")
    span, real, _ = backend.page_span(page)
    model = backend.model
    with torch.no_grad():
        # queries = 0 except through the null score: make "no answer" lose, and pick by keys
        model.span_null.bias.fill_(-1e4)
    answer = backend.answer("Which code?", [page])
    assert answer.found and answer.text and answer.text in page.text
    assert real.sum() == len(page.text.encode()) and span.shape[1] % 4 == 0


def test_answer_is_deterministic_and_uses_tokens_only_caches(backend):
    pages = vision_pages(backend, 2)
    first = backend.answer("Which page?", pages, max_new_tokens=8)
    assert backend.answer("Which page?", pages, max_new_tokens=8) == first
    tokens_only = [
        ContextPage(p.document_id, p.page, p.label, p.tier, tensors={"tokens": p.tensors["tokens"]})
        for p in pages
    ]
    again = backend.answer("Which page?", tokens_only, max_new_tokens=8)
    assert again.page_scores == pytest.approx(first.page_scores, abs=1e-3)


def test_weights_with_a_cell_reader_read_optical_pages_cell_by_cell():
    backend = ReferenceBackend(config=tiny_config(cell_slots=6, cell_hidden=4))
    page = vision_pages(backend, 1)[0]
    with torch.inference_mode(), backend._autocast():  # as encode and read_page read
        cells = backend.model.read_cells(page.tensors["tokens"][None].float())[0]
    whole = assemble(cells, 4)  # gist: 4 x 4 cells
    assert backend.read_page(page, max_new_tokens=4096) == whole
    cut = backend.read_page(page, max_new_tokens=5)
    assert len(cut.encode()) <= 5 and whole.startswith(cut)
    text_page = ContextPage("d", 1, "d p.1", "text", text="hello")
    assert len(backend.read_page(text_page, max_new_tokens=5)) <= 5  # the decoder, as before
    with pytest.raises(ValueError, match="cached tokens are .* expects"):
        backend.read_page(ContextPage("d", 1, "d p.1", "tiny", tensors=page.tensors))
    with pytest.raises(ValueError, match="no cached 'tokens'"):
        backend.read_page(ContextPage("d", 1, "d p.1", "gist", tensors={"kv": page.tensors["kv"]}))


def test_weights_with_a_cell_reader_store_what_each_page_reads_back():
    backend = ReferenceBackend(config=tiny_config(cell_slots=6, cell_hidden=4))
    page = vision_pages(backend, 1)[0]
    stored = bytes(page.tensors["read"].tolist())  # encode read it from the fp16 tokens
    fresh = ContextPage("d", 1, "d p.1", "gist", tensors={"tokens": page.tensors["tokens"]})
    assert backend.read_page(fresh, 4096).encode() == stored == backend.read_tokens(page)


def test_optical_pages_are_answered_from_what_they_read_back():
    """A question over optical pages: each page's read-back (as encode stored it) is what the
    copy path reads, the answer comes from it, and its page is cited."""
    backend = ReferenceBackend(
        config=tiny_config(cell_slots=6, cell_hidden=4), scorer=False, extractor=True
    )
    pages = vision_pages(backend, 3)
    reads = [
        "Staff. The Lisbon office employs 37 engineers and 5 designers.",
        "The Porto office is managed by Rui Lopes since March 2021.",
        "Invoices are paid within 30 days of receipt.",
    ]
    for page, read in zip(pages, reads, strict=True):
        page.tensors["read"] = utf8_tensor(read.encode())
    got = backend.answer("How many engineers work in the Lisbon office?", pages)
    assert got.found and got.text.startswith("37")
    assert max(range(3), key=lambda i: got.page_scores[i]) == 0
    other = backend.answer("Who manages the Porto office?", pages)
    assert other.found and "Rui Lopes" in other.text
    assert max(range(3), key=lambda i: other.page_scores[i]) == 1
    assert backend.read_page(pages[2], 4096) == reads[2]
    # without a cell reader an optical page holds nothing the copy path can read
    plain = ReferenceBackend(config=tiny_config(), scorer=False, extractor=True)
    assert not plain.answer("Who manages the Porto office?", vision_pages(plain, 3)).found


def test_a_faded_page_read_with_errors_is_found_by_the_words_it_misreads():
    """An optical read-back misreads words ("Hikoff", "proect"): the question's words still find
    its page, the reader is shown them spelt as the question spells them, and the answer is
    copied from that corrected window; a text-tier page is matched word for word as before."""
    backend = ReferenceBackend(
        config=tiny_config(cell_slots=6, cell_hidden=4), scorer=False, extractor=True
    )
    pages = vision_pages(backend, 3)
    reads = [
        "Invoices are paid within 30 days of receipt. The canteen opens at 8.",
        "Progess. The Hikoff meetinng for the Pelican proect is set for 20 June 2023.",
        "The Porto office is managed by Rui Lopes since March 2021.",
    ]
    for page, read in zip(pages, reads, strict=True):
        page.tensors["read"] = utf8_tensor(read.encode())
    question = "When is the kickoff meeting for the Pelican project?"
    got = backend.answer(question, pages)
    assert got.found and got.text == "20 June 2023"
    assert max(range(3), key=lambda i: got.page_scores[i]) == 1
    readable = [backend.readable(p) for p in pages]
    packed = backend.packed(readable)
    windows = backend.reading_windows(question, readable, packed)
    first = windows[0]
    assert first.page == 1 and first.read
    assert "The kickoff meeting for the Pelican project is set" in first.text
    assert backend.read_page(pages[1], 4096) == reads[1]  # what is stored is what was read
    # a text-tier page that misspells the words is not rewritten: the text tier is exact
    text = [ContextPage("d", i, f"d p.{i}", "text", text=r) for i, r in enumerate(reads)]
    assert not any(w.read for w in backend.reading_windows(question, text, backend.packed(text)))


def test_read_page_from_vision_and_text_tiers(backend):
    page = vision_pages(backend, 1)[0]
    assert isinstance(backend.read_page(page, max_new_tokens=8), str)
    text_page = ContextPage("d", 1, "d p.1", "text", text="hello")
    assert len(backend.read_page(text_page, max_new_tokens=5)) <= 5  # 5 bytes, some invalid
    with pytest.raises(ValueError, match="cached kv is .* expects"):
        backend.read_page(ContextPage("d", 1, "d p.1", "tiny", tensors=page.tensors))
    with pytest.raises(ValueError, match="needs page.text"):
        backend.read_page(ContextPage("d", 1, "d p.1", "text"))


def test_save_load_round_trip_gives_identical_outputs(weights, config):
    model, loaded_config, metadata = load_model(weights)
    assert loaded_config == config
    assert metadata["step"] == "1200" and json.loads(metadata["loss"]) == 0.5
    assert metadata["sha256"] == sha256_file(weights)
    original = random_model(config, seed=3)  # fp16-rounded like the file
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    backend = ReferenceBackend(weights)
    assert backend.trained is True
    assert backend.version == "reference-" + sha256_file(weights)[:12]
    pages = vision_pages(backend, 2)
    again = ReferenceBackend(weights.parent)  # a directory holding reference.safetensors
    assert again.version == backend.version
    for a, b in zip(pages, vision_pages(again, 2), strict=True):
        assert torch.equal(a.tensors["kv"], b.tensors["kv"])
    assert backend.answer("q?", pages, 6) == again.answer("q?", pages, 6)


def test_untrained_weights_file_reports_untrained(tmp_path, config):
    path = tmp_path / "w.safetensors"
    save_weights(random_model(config), config, path)
    assert ReferenceBackend(path).trained is False


def test_config_with_unknown_and_missing_keys_still_loads(weights, config):
    state = load_file(weights)
    old = config.to_dict()
    old["field_of_a_newer_version"] = "ignored"
    del old["repeat_min_span"]  # a field this file predates: takes its default
    save_file(state, weights, metadata={"config": json.dumps(old), "step": "5"})
    checksum_path(weights).write_text(f"{sha256_file(weights)}  {weights.name}\n")
    backend = ReferenceBackend(weights)
    assert backend.config == config
    assert backend.trained is True


def test_checksum_mismatch_refuses_to_load(weights):
    checksum_path(weights).write_text("0" * 64 + "  reference.safetensors\n")
    with pytest.raises(WeightsIntegrityError, match="sha256 is [0-9a-f]{64} but .* says 0{64}"):
        ReferenceBackend(weights)
    checksum_path(weights).unlink()
    with pytest.raises(WeightsIntegrityError, match="no checksum file"):
        load_model(weights)


def test_corrupted_weights_refuse_to_load(weights):
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="refusing to load"):
        load_model(weights)


def test_load_backend(tmp_path, weights):
    assert load_backend("reference", weights).version == ReferenceBackend(weights).version
    with pytest.raises(FileNotFoundError):
        load_backend("reference", tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="KB_MODEL_PATH"):
        load_backend("deepseek-ocr2")
    with pytest.raises(ValueError, match="unknown model backend 'gpt'"):
        load_backend("gpt")


def test_question_scorer_biases_the_copy_path_towards_the_answering_sentence(config):
    backend = ReferenceBackend(config=config, scorer=True)
    text = "Revenue in Q3 was 4.2 million euros.\nThe Lisbon office employs 37 engineers."
    tensors = backend.encode_text([text])[0]
    assert tensors["segments"].shape == (2, 384)
    assert tensors["segment_bytes"].tolist() == [[0, 36], [37, len(text.encode())]]
    page = ContextPage("d", 1, "d p.1", "text", tensors=tensors, text=text)
    question = "How many engineers work in Lisbon?"
    bias = backend.segment_bias(question, backend.packed([page]))
    assert bias is not None and bias.shape == (tensors["span"].shape[1],)
    assert bias[text.encode().index(b"37")] > bias[text.encode().index(b"4.2")] + 2
    # a random-initialised backend goes without a scorer unless given one
    assert ReferenceBackend(config=config).scorer is None


def test_warm_up_loads_the_sentence_embedder_before_the_first_page(config):
    backend = ReferenceBackend(config=config, scorer=SentenceEmbedder())
    assert backend.scorer is not None and backend.scorer._model is None  # loaded on first use
    backend.warm_up()  # what a worker process does when it starts (workers.tasks)
    assert backend.scorer._model is not None


@pytest.mark.parametrize(
    "piece,word",
    [("Osa", "Osaka"), ("QZ-", "QZ-4410"), ("210", "8,210,896"), ("EU", "EUR"), ("37", "37")],
)
def test_answers_are_whole_words(piece, word):
    data = b"The supplier is in Osaka. Code QZ-4410, total 8,210,896 EUR; 37 staff."
    i = data.index(piece.encode())
    a, b = whole_words(data, i, i + len(piece))
    assert data[a:b].decode() == word


@pytest.mark.parametrize(
    "piece,span",
    [("www.gnu", "https://www.gnu.org/licenses/why-not-lgpl.html"), ("tgz", ".tgz"),
     ("taz", ".taz"), ("bashrc", ".bashrc"), ("end", "end")],
)  # fmt: skip
def test_a_url_keeps_its_scheme_and_an_extension_its_dot(piece, span):
    data = b"See https://www.gnu.org/licenses/why-not-lgpl.html: .tgz and .taz, ~/.bashrc. The end."
    i = data.index(piece.encode())
    a, b = whole_words(data, i, i + len(piece))
    assert data[a:b].decode() == span


@pytest.mark.parametrize(
    "piece,span",
    [("signal(2", "pidfd_send_signal(2)"), ("pattern>", "<pattern>"), ("(ZLIB", "(ZLIB)")],
)
def test_answers_take_the_bracket_they_open_or_close(piece, span):
    data = b"See pidfd_send_signal(2) and --exclude=<pattern>; it uses (ZLIB) and [x]."
    i = data.index(piece.encode())
    a, b = whole_words(data, i, i + len(piece))
    assert data[a:b].decode() == span
    # a span whose brackets match is left as it is
    i = data.index(b"[x]")
    assert whole_words(data, i, i + 3) == (i, i + 3)


def test_the_byte_decoder_streams_its_answer_as_it_generates_it(config):
    """Weights without the copy path decode byte by byte: answer_stream yields each character
    as it is produced, and its pieces and its Answer are what answer() gives."""
    decoder = ReferenceBackend(config=tiny_config(span_head=False))
    pages = vision_pages(decoder, 2)
    whole = decoder.answer("Which page?", pages, max_new_tokens=24)
    stream = decoder.answer_stream("Which page?", pages, max_new_tokens=24)
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            streamed = done.value
            break
    assert streamed == whole
    assert len(pieces) > 1 and all(pieces)  # several pieces, none empty
    # the random model may loop, and the guard cuts the repeats from the answer afterwards
    assert "".join(pieces).startswith(whole.text)


def test_the_copy_path_streams_its_span_once(backend):
    page = ContextPage("notes", 1, "notes.txt p.1", "text", text="Code: QZ-4410 (new)")
    with torch.no_grad():
        backend.model.span_null.bias.fill_(-1e4)  # "no answer" loses: a span is copied
    stream = backend.answer_stream("Which code?", [page])
    assert next(stream) == backend.answer("Which code?", [page]).text
    with pytest.raises(StopIteration) as done:
        next(stream)
    assert done.value.value == backend.answer("Which code?", [page])


def test_bf16_encoding_stays_close_to_fp32(config):
    """Ingest encodes under bf16 autocast where the CPU has it; what it stores stays fp16 and
    within bf16's rounding of the fp32 encoding, at a vision tier and at the text tier."""
    fp32 = ReferenceBackend(config=config, bf16=False)
    bf16 = ReferenceBackend(config=config, bf16=True)
    assert fp32.version == bf16.version  # the same weights: the same tensors' key
    images = [page_image(256, f"page {i}") for i in range(2)]
    for a, b in zip(fp32.encode(images, "gist"), bf16.encode(images, "gist"), strict=True):
        assert b["kv"].dtype == torch.float16
        assert (a["kv"].float() - b["kv"].float()).norm() <= 0.02 * a["kv"].float().norm()
    a, b = (
        fp32.encode_text(["Lisbon has 37 engineers."])[0],
        bf16.encode_text(["Lisbon has 37 engineers."])[0],
    )
    assert b["kv"].dtype == torch.float16
    assert (a["kv"].float() - b["kv"].float()).norm() <= 0.02 * a["kv"].float().norm()
