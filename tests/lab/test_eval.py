"""The evaluation: its scoring functions on known cases, and a whole quick run on a tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from kb.model.base import ContextPage
from kb.model.reference.backend import ReferenceBackend
from lab import eval as kb_eval


def dp_distance(a: str, b: str) -> int:
    """The textbook Levenshtein DP, to check the vectorised one against."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_edit_distance_known_cases():
    assert kb_eval.edit_distance("kitten", "sitting") == 3
    assert kb_eval.edit_distance("", "abc") == 3
    assert kb_eval.edit_distance("abc", "") == 3
    assert kb_eval.edit_distance("same", "same") == 0
    assert kb_eval.edit_distance("flaw", "lawn") == 2
    assert kb_eval.edit_distance("Straße 5 €", "Strasse 5 $") == 3  # code points, not bytes


def test_edit_distance_matches_the_textbook_dp():
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 30)))
        b = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 30)))
        assert kb_eval.edit_distance(a, b) == dp_distance(a, b), (a, b)


def test_precision():
    page = "The Vireo project is led by Maria Okafor."
    assert kb_eval.precision(page, page) == 1.0
    assert kb_eval.precision("", page) == 0.0
    assert kb_eval.precision("sitting", "kitten") == pytest.approx(1 - 3 / 6)
    assert kb_eval.precision("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    # Far longer than the reference: clipped at 0, never negative.
    assert kb_eval.precision("x" * 100, "abc") == 0.0
    # Layout whitespace is not content: runs of spaces and line breaks count as one space.
    assert kb_eval.precision("Total:\n\n  42  EUR", "Total: 42 EUR") == 1.0
    with pytest.raises(ValueError):
        kb_eval.precision("abc", " \n ")


def test_head_precision_scores_the_top_of_the_page_only():
    page = "Invoice INV-99361 " + "line of body text " * 50
    assert kb_eval.head_precision("Invoice INV-99361 line of", page, 20) == 1.0
    assert kb_eval.head_precision("Invoice INV-99361 line of", page, 200) < 0.15
    # a read-back that stops early is charged for the head it left out
    assert kb_eval.head_precision("Invoice", page, 20) == pytest.approx(7 / 20)
    assert kb_eval.head_precision("Incons INopice", page, 20) < 0.5


def test_text_tokens_and_buckets():
    assert kb_eval.text_tokens("abcd" * 650) == 650
    assert kb_eval.text_tokens("ab  cd\n") == 5 / 4  # "ab cd"
    assert kb_eval.bucket_of(0) == "short"
    assert kb_eval.bucket_of(599.75) == "short"
    assert kb_eval.bucket_of(600) == "600-700"
    assert kb_eval.bucket_of(699.99) == "600-700"
    assert kb_eval.bucket_of(1000) == "1000-1100"
    assert kb_eval.bucket_of(1299.75) == "1200-1300"
    assert kb_eval.bucket_of(1300) is None
    names = [name for name, _, _ in kb_eval.BUCKETS]
    assert names == ["short"] + [f"{lo}-{lo + 100}" for lo in range(600, 1300, 100)]


def test_token_f1_is_squads():
    from lab.metrics import token_f1

    assert token_f1("three years", "at least three years") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("The 44-byte header", "44-byte header") == 1.0  # article, punctuation
    assert token_f1("60 days", "30 days") == 0.5
    assert token_f1("Rotterdam", "Lisbon") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("a", "x") == 0.0


def test_an_answer_that_scores_no_page_cites_none_first():
    from lab.metrics import cited_first

    # Not found scores every page 0: that is no citation, not a citation of page 0 (a needle
    # at depth 0 was once counted as cited by an answer that cited nothing).
    assert cited_first([0.0, 0.0, 0.0]) is None
    assert cited_first([]) is None
    assert cited_first([0.0, 0.2, 1.3]) == 2
    assert cited_first([0.9, 0.2]) == 0


def test_answer_matching_ignores_case_and_whitespace_only():
    assert kb_eval.answer_matches("  maria   OKAFOR\n", "Maria Okafor")
    assert not kb_eval.answer_matches("Maria Okafor.", "Maria Okafor")
    assert not kb_eval.answer_matches("Maria", "Maria Okafor")


@pytest.mark.parametrize(
    ("depth", "n", "index"),
    [(0.0, 10, 0), (1.0, 10, 9), (0.5, 10, 5), (0.25, 100, 25), (0.75, 1000, 749), (0.5, 1, 0)],
)
def test_needle_position(depth, n, index):
    assert kb_eval.needle_position(depth, n) == index


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_haystack_puts_the_needle_at_its_depth(depth):
    order = kb_eval.haystack(1000, 100, depth, random.Random(1))
    assert len(order) == 100
    assert order.index(None) == kb_eval.needle_position(depth, 100)
    assert order.count(None) == 1
    fillers = [i for i in order if i is not None]
    assert len(set(fillers)) == 99 and all(0 <= i < 1000 for i in fillers)
    # Another draw: another subset or order of the same pool.
    assert kb_eval.haystack(1000, 100, depth, random.Random(2)) != order
    with pytest.raises(ValueError):
        kb_eval.haystack(10, 100, depth, random.Random(1))
    with pytest.raises(ValueError):
        kb_eval.needle_position(1.5, 10)


@pytest.mark.parametrize("cells", [0, 6])
def test_batched_read_back_is_read_page(config, cells):
    """The eval reads pages in batches; it must read exactly what read_page reads, one by one
    (the decoder, or weights with a cell reader)."""
    from dataclasses import replace

    backend = ReferenceBackend(config=replace(config, cell_slots=cells))
    size = config.tier_sizes["gist"]
    images = []
    for i in range(3):
        image = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(image).text((4 + 9 * i, 8), f"page {i} " * (i + 1), fill="black")
        images.append(image)
    pages = [
        ContextPage("d", i + 1, "", "gist", tensors=t)
        for i, t in enumerate(backend.encode(images, "gist"))
    ]
    budgets = [40, 300, 7]
    batched = kb_eval.read_back(backend, pages, budgets)
    one_by_one = [backend.read_page(p, m) for p, m in zip(pages, budgets, strict=True)]
    assert batched == one_by_one
    assert len(batched[2].encode()) <= 7


def test_batched_text_read_back_is_read_page(config):
    """make eval's text read-back (batched, pages of different lengths, the read pointer over
    each row's own bytes) reads exactly what read_page reads, page by page."""
    from dataclasses import replace

    from lab import eval_text

    backend = ReferenceBackend(config=replace(config, copy_head=True, copy_offsets=4))
    texts = ["Invoice INV-20931 total 4,200 EUR", "Memo", "Room B412 is booked.\nFrom 9:00."]
    batched = eval_text.read_text_pages(backend, texts, extra=4)
    one_by_one = [
        backend.read_page(ContextPage("d", 1, "", "text", text=t), len(t.encode()) + 4)
        for t in texts
    ]
    assert batched == one_by_one


def test_quick_run_writes_every_section(config, tmp_path: Path):
    backend = ReferenceBackend(config=config)
    out = tmp_path / "eval.json"
    cache = tmp_path / "cache"
    argv = ["--quick", "--out", str(out), "--cache-dir", str(cache)]
    report = kb_eval.main(argv, backend=backend)

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report))
    for key in ("model", "machine", "command", "date", "loadavg", "sizes", "goals"):
        assert key in written
    assert written["model"]["version"] == backend.version
    assert written["model"]["trained"] is False
    assert written["command"] == "python -m lab.eval " + " ".join(argv)
    assert written["machine"]["cpu_count"] and written["machine"]["torch_threads"]
    assert len(written["loadavg"]["start"]) == 3

    readback = written["readback"]
    assert [b["bucket"] for b in readback["buckets"]] == ["short", "600-700"]
    for bucket in readback["buckets"]:
        assert set(bucket["tiers"]) == {"base", "small", "tiny", "gist"}
        for tier, cell in bucket["tiers"].items():
            assert 0.0 <= cell["precision"] <= 1.0
            vision = backend.tier_tokens[tier]
            assert cell["compression"] == pytest.approx(
                bucket["mean_text_tokens"] / vision, abs=0.01
            )
    assert "characters / 4" in readback["text_tokens"]
    assert readback["head_chars"] == kb_eval.HEAD_CHARS
    assert set(readback["mean_head_precision"]) == {"base", "small", "tiny", "gist"}
    assert all(0.0 <= v <= 1.0 for v in readback["mean_head_precision"].values())
    assert set(readback["mean_title_precision"]) == {"base", "small", "tiny", "gist"}

    needle = written["needle"]
    assert {(r["tier"], r["n"]) for r in needle["results"]} == {
        ("base", 10),
        ("tiny", 10),
        ("small", 10),
        ("gist", 10),
    }
    assert sorted({r["depth"] for r in needle["results"]}) == [0.0, 0.5, 1.0]
    for r in needle["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["citation_accuracy"] <= 1.0

    cross = written["cross_document"]
    assert cross["tiers"]["tiny"]["questions"] >= 5
    assert 0.0 <= cross["tiers"]["tiny"]["accuracy"] <= 1.0
    by_kind = cross["tiers"]["tiny"]["by_kind"]
    assert "other" not in by_kind  # every question of the data engine has a known kind
    assert sum(k["questions"] for k in by_kind.values()) == cross["tiers"]["tiny"]["questions"]

    speed = written["speed"]
    assert set(speed["encode"]) == {"base", "small", "tiny", "gist"}
    assert all(cell["pages_per_s"] > 0 for cell in speed["encode"].values())
    assert [r["n"] for r in speed["latency"]] == [1, 10]
    assert all(r["median_s"] > 0 for r in speed["latency"])

    # Real PDFs the project did not write, every tier, against their text layer.
    real = written["readback_pdf"]
    assert real["documents"] == ["libtasn1.pdf", "shared-mime-info-spec.pdf"]
    assert real["pages"] == 2 * 2  # --quick: two pages of each
    for tier, cell in real["tiers"].items():
        assert 0.0 <= cell["precision"] <= 1.0 and 0.0 <= cell["heading_precision"] <= 1.0
        assert cell["compression"] == pytest.approx(
            real["mean_text_tokens"] / backend.tier_tokens[tier], abs=0.01
        )
        assert set(cell["per_document"]) == set(real["documents"])
    assert set(real["tiers"]) == {"base", "small", "tiny", "gist"}

    # The seeds' thesis: the same needles over the same pages at the text tier and optical ones.
    thesis = written["thesis"]
    assert thesis["tiers"] == ["text", "base", "small", "tiny"]
    row = thesis["results"]["10"]
    for tier in ("text", "base", "small", "tiny"):
        assert row[tier]["questions"] == 3
        assert 0.0 <= row[tier]["accuracy"] <= 1.0 and row[tier]["median_s"] > 0
        assert row[tier]["kv_bytes"] == row[tier]["memory_tokens"] * (
            backend.config.n_layers * 2 * backend.config.d_model * 2
        )
    assert row["tiny"]["memory_tokens"] == 10 * backend.tier_tokens["tiny"]
    assert row["compression"] == pytest.approx(
        row["text"]["memory_tokens"] / row["tiny"]["memory_tokens"], abs=0.01
    )
    assert row["compression"] == row["tiny"]["compression"]
    assert row["base"]["compression"] < row["small"]["compression"] < row["compression"]

    # What the faint tiers keep: the kind of document, probed on every tier's tokens alike.
    kind = written["kind"]
    assert (kind["train_pages"], kind["heldout_pages"]) == (24, 10)
    assert set(kind["kinds"]) <= {"paragraphs", "list", "table", "form", "two_column"}
    assert 0.0 < kind["chance"] <= 1.0
    assert set(kind["tiers"]) == {"base", "small", "tiny", "gist"}
    for tier, cell in kind["tiers"].items():
        assert 0.0 <= cell["accuracy"] <= 1.0 and cell["vision_tokens"] == backend.tier_tokens[tier]
        assert set(cell["per_kind"]) <= set(kind["kinds"])

    goals = {g["goal"]: g for g in written["goals"]}
    assert len(goals) == 11
    assert all(g["met"] is None for g in goals.values() if g["measured"] is None)

    # Pool pages are encoded once per tier and model version, then read from the cache.
    cached = list((cache / "tensors" / backend.version).rglob("*.safetensors"))
    assert len(cached) == 4 * written["needle"]["pool_pages"]  # base, tiny, small, gist


def test_a_run_of_some_sections_measures_only_their_goals(config, tmp_path: Path):
    backend = ReferenceBackend(config=config)
    argv = ["--quick", "--sections", "thesis", "--out", str(tmp_path / "e.json")]
    report = kb_eval.main([*argv, "--cache-dir", str(tmp_path / "cache")], backend=backend)
    assert "thesis" in report and report["thesis"]["results"]["10"]["text"]["questions"] == 3
    for skipped in ("readback", "readback_pdf", "needle", "cross_document", "speed"):
        assert skipped not in report
    # (a random model answers nothing right at the text tier: no share kept to report either)
    assert all(g["measured"] is None for g in report["goals"])
    assert len(report["goals"]) == 11
    with pytest.raises(SystemExit):
        kb_eval.main(["--quick", "--sections", "nonsense"], backend=backend)
    # a targeted needle run: one tier, the haystack sizes asked for
    argv = ["--quick", "--sections", "needle", "--needle-tiers", "gist", "--needle-ns", "3", "5"]
    argv += ["--out", str(tmp_path / "n.json"), "--cache-dir", str(tmp_path / "cache")]
    needle = kb_eval.main(argv, backend=backend)["needle"]
    assert {(r["tier"], r["n"]) for r in needle["results"]} == {("gist", 3), ("gist", 5)}


def test_text_eval_quick_run_writes_every_section(config, tmp_path: Path):
    from kb.model.reference.backend import ReferenceBackend
    from lab import eval_text

    backend = ReferenceBackend(config=config)
    out = tmp_path / "text.json"
    report = eval_text.main(["--quick", "--out", str(out)], backend=backend)
    saved = json.loads(out.read_text())
    for section in ("readback", "one_page", "needle", "absent", "cross", "people", "speed"):
        assert section in report and section in saved
    assert 0 <= report["readback"]["precision"] <= 1
    # held-out questions people wrote, asked over their own documents: 2 answered, 1 not
    people = report["people"]
    assert (people["questions"], people["absent_questions"]) == (2, 1)
    assert all(row["expected"] for row in people["examples"])
    assert {g["goal"] for g in report["goals"]} >= {"people's held-out questions: span right"}
    assert report["speed"]["10"]["text"]["tokens"] > report["speed"]["10"]["tiny"]["tokens"] > 0


def test_natural_questions_are_laid_out_as_uploads_and_checked():
    from lab.natural import check

    assert check.main() == 0


def test_a_natural_answer_counts_when_it_is_an_accepted_one_whole():
    from lab.eval_text import score_natural

    q = {"answer": "exit status is 2", "accept": ["2"]}
    assert score_natural("2", True, q) == {"exact": True, "span": True, "span_strict": False,
                                           "f1": 1.0}  # fmt: skip
    assert score_natural("The exit status is 2.", True, q)["span_strict"]
    wrong = score_natural("20 days", True, q)  # "2" is matched whole, not inside
    assert not wrong["span"] and not wrong["exact"]
    assert score_natural("Not found in the collection.", False, q)["f1"] == 0.0
    plain = score_natural("2", True, {"answer": "exit status is 2"})  # no accepted answers
    assert not plain["span"] and plain["f1"] == pytest.approx(0.4)


def test_kind_features_pool_every_tier_to_gist_s_grid():
    """Section f's probe sees every tier through the same 4 x 4 grid: gist's tokens unchanged,
    a 16 x 16 grid averaged over 4 x 4 blocks of cells."""
    gist = torch.arange(16 * 3, dtype=torch.float32).reshape(16, 3)
    assert kb_eval.kind_features(gist).tolist() == gist.T.flatten().tolist()
    base = torch.zeros(256, 2)
    base[0, 0] = 1.0  # the top-left cell of the top-left block, first dimension
    features = kb_eval.kind_features(base).reshape(2, 4, 4)
    assert features[0, 0, 0] == pytest.approx(1 / 16) and features.sum() == pytest.approx(1 / 16)
