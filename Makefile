# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
CHECKED := src tests examples

# The browser tests drive the system's chromium (target `chromium`): playwright must never
# download a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

# Bytecode is kept (in __pycache__, ignored by git) even where the shell says otherwise: the tests
# start Python processes by the dozen (examples, README blocks, the CLI, SQLite writers) and pytest
# rewrites every test module, so without it each run compiles all of chatstate and the tests again
# (some 4 s of `make test-fast`).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast lint typecheck unit unit-fast test-redis-lowest bench redis-server chromium clean

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

# The browser tests (marker `browser`) drive Debian's chromium, headless, through playwright.
chromium:
	@if ! command -v chromium >/dev/null; then \
	  echo "installing chromium (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium fonts-liberation >/dev/null; \
	fi
	@command -v chromium >/dev/null || { echo "chromium could not be installed" >&2; exit 1; }

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev redis-server chromium
	$(BIN)/pytest

test: lint typecheck unit test-redis-lowest

# The Redis tests again on the lowest redis-py that pyproject.toml allows (its floor, read from
# the `redis[hiredis]>=X` there), in a venv of their own: the declared range is the tested range,
# from the floor (here) to the newest (`unit`). The Redis tests are those marked `redis` and those
# named for Redis (fakeredis among the kinds of store, the Redis modules), not the bench run that
# leaves Redis out. About 70 s on 2 cores, plus about 30 s of install on a first run.
REDIS_FLOOR := $(shell sed -n 's/.*"redis\[hiredis\]>=\([0-9.]*\)[,"].*/\1/p' pyproject.toml | head -1)
VENV_LOWEST := .venv-lowest
REDIS_TESTS := -k "(redis or autopipeline) and not without_redis"

$(VENV_LOWEST)/bin/python:
	$(PYTHON) -m venv $(VENV_LOWEST)

$(VENV_LOWEST)/.installed-dev: pyproject.toml | $(VENV_LOWEST)/bin/python
	$(VENV_LOWEST)/bin/python -m pip --quiet --disable-pip-version-check install \
	  -e '.[dev]' 'redis[hiredis]==$(REDIS_FLOOR)' 2> >(grep -v '^WARNING: Location' >&2)
	touch $@

test-redis-lowest: $(VENV_LOWEST)/.installed-dev redis-server
	@$(VENV_LOWEST)/bin/python -c 'import redis; assert redis.__version__ == "$(REDIS_FLOOR)", redis.__version__; print("redis-py", redis.__version__, "(the floor)")'
	$(VENV_LOWEST)/bin/pytest $(REDIS_TESTS)

# The same checks and every test that needs no redis-server (marker `redis`), no browser (marker
# `browser`) and is not slow (marker `slow`: the stateful and fuzz runs of every store, a memory
# soak, a bench run), each property with a fifth of its hypothesis examples (the "fast" profile,
# tests/conftest.py); `make test` runs them all, in full. About 13 s of pytest on a quiet
# machine; the checks run beside it (mypy takes 5 s without its cache), each job's output shown
# whole as it ends.
unit-fast: $(VENV)/.installed-dev
	$(BIN)/pytest -m "not redis and not slow and not browser" --hypothesis-profile=fast

test-fast: $(VENV)/.installed-dev
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint typecheck unit-fast

# `chatstate bench` on the in-memory store and a throw-away redis-server; ARGS="--quick" for a
# smoke run, ARGS="--json bench.json --plot bench.png" to keep the figures (see docs/benchmarks.md).
bench: $(VENV)/.installed-dev redis-server
	$(BIN)/chatstate bench --redis-server $(ARGS)

clean:
	rm -rf $(VENV) $(VENV_LOWEST) .mypy_cache .ruff_cache .pytest_cache .hypothesis
