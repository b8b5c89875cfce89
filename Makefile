# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
CHECKED := src tests examples

.PHONY: demo test test-fast lint typecheck unit unit-fast bench redis-server clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps, so that a second `make` skips the install; a changed pyproject.toml reinstalls.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e . 2> >(grep -v '^WARNING: Location' >&2)
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]' 2> >(grep -v '^WARNING: Location' >&2)
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python examples/basic_conversation.py

# The Redis tests start their own redis-server processes (and make a TLS certificate with
# openssl); install what is missing from Debian's packages.
redis-server:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v redis-server >/dev/null || { echo "redis-server could not be installed" >&2; exit 1; }

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev redis-server
	$(BIN)/pytest

test: lint typecheck unit

# The same checks and every test that needs no redis-server (marker `redis`) and is not slow
# (marker `slow`: hypothesis runs, the bench): about 25 s of pytest; `make test` runs them all.
unit-fast: $(VENV)/.installed-dev
	$(BIN)/pytest -m "not redis and not slow"

test-fast: lint typecheck unit-fast

# `chatstate bench` on the in-memory store and a throw-away redis-server; ARGS="--quick" for a
# smoke run, ARGS="--json bench.json --plot bench.png" to keep the figures (see docs/benchmarks.md).
bench: $(VENV)/.installed-dev redis-server
	$(BIN)/chatstate bench --redis-server $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
