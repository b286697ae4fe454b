# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs Tether and runs `tether demo` (the whole loop, offline, on the CPU)
#   make test   creates .venv, installs Tether with its test tools and runs the full test suite
# On a GPU machine, install your own torch build first (or set TORCH_SPEC) and the rest is the same.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint install install-test bench browser-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	@# torch first: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .

install-test: install
	$(BIN)/pip install -q -e ".[test]"

# Debian's Chromium for the browser test (skipped with a message when it cannot be installed).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "note: chromium not installed; the browser test will be skipped"; }

demo: install
	$(BIN)/tether demo

# The full suite, slow tests included (what CI runs). PostgreSQL tests run when TETHER_TEST_POSTGRES_URL
# is set or a server answers on 127.0.0.1:5432.
test: install-test browser-deps lint
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

# Style and the layer contracts of DESIGN.md (pyproject.toml, tool.importlinter).
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# The quick loop while developing: slow tests left out.
test-fast: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/pip install -q -e ".[bench]"
