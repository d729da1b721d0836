# Everything a fresh machine needs: `make run` and `make test` create the environment themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Debian's Chromium, for the web page's browser test (tests/api/test_web_page.py): Playwright
# drives it and never downloads a browser of its own.
CHROMIUM := /usr/bin/chromium

.PHONY: install run test test-fast fuzz lint eval bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: that version is a local CPU wheel on these machines (no CUDA download).
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CHROMIUM):
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "chromium could not be installed: the browser test will skip (and fail in CI)"

install: $(STAMP) $(CHROMIUM)

run: $(STAMP)
	$(PY) -m kb.cli run

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q --durations=25 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# Schemathesis against the running service's OpenAPI document (also part of `make test`);
# SCHEMATHESIS_EXAMPLES=200 SCHEMATHESIS_SEED=N explore further.
fuzz: $(STAMP)
	$(PY) -m pytest -q tests/api/test_openapi_contract.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

eval: $(STAMP)
	$(PY) -m lab.eval_text   # the text tier: read-back, needles, facts, absent, natural questions
	$(PY) -m lab.eval        # the optical tiers: read-back, needles, cross-document, speed

bench: $(STAMP)
	$(PY) -m lab.bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
