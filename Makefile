# trainserve: `make run` starts the service on the embedded default; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch, pinned for development and CI (an unpinned torch resolves to a CUDA build).
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.trainserve-installed

.PHONY: install run test test-fast bench browser lint clean

$(STAMP): pyproject.toml sdk/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' -e ./sdk
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/trainserve-server up

browser:
	bash scripts/install-browser.sh

test: $(STAMP) browser
	$(BIN)/pytest -q -ra -n 2 --dist loadfile --durations=25

test-fast: $(STAMP)
	$(BIN)/pytest -q -ra -m "not postgres" --deselect tests/test_dashboard.py

bench: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service worker sdk tests bench
	$(BIN)/mypy service worker sdk/trainserve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
