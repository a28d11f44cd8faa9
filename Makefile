# twelve-in-one — one Makefile for everything a user or CI runs.
# `make test` and `make serve` create the Python environment themselves on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_WORKERS ?= 2

.PHONY: help env test test-fast lint fmt check audit bench serve clean browser

help:
	@echo "make serve   build the demo model if needed and start the API (see README)"
	@echo "make test    create the environment if needed and run the test suite"
	@echo "make lint    ruff lint + format check;  make fmt  apply ruff fixes and formatting"
	@echo "make check   lint + generated-artifact drift checks"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

env: $(STAMP)

# Headless Chromium (Debian's package) for the browser test; best effort, the test skips without it.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: could not install chromium; the browser test will be skipped"

test: $(STAMP) browser
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

fmt: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

check: lint
	$(PY) -m export.check

# Every performance figure side by side (docs/performance.md, bench/results/latest.json).
bench: $(STAMP)
	$(PY) -m bench

# Dependency audit against the PyPA advisory database.  Needs PyPI's JSON API, which this workplace
# cannot reach (every package is skipped there), so it is not part of `lint`; see docs/reliability.md.
audit: $(STAMP)
	$(PY) -m pip_audit -l --strict --progress-spinner off

# Builds the demo model on first start (synthetic world -> detector -> features -> training ->
# export), then starts Triton and the gateway on 127.0.0.1:8000.  TWELVE_BACKEND=local skips Triton.
# `make serve OFFICIAL=DIR [PRECISION=int8]` serves the 12-in-1 release files in DIR instead (docs/official-model.md).
serve: $(STAMP)
	$(PY) -m bootstrap $(if $(OFFICIAL),--official "$(OFFICIAL)") $(if $(PRECISION),--precision $(PRECISION))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build artifacts
