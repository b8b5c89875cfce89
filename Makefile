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

# mkdocs 1.6 prints a notice about a future mkdocs 2 on every run: not ours to act on here.
export NO_MKDOCS_2_WARNING := 1

# Bytecode is kept (in __pycache__, ignored by git) even where the shell says otherwise: the tests
# start Python processes by the dozen (examples, README blocks, the CLI, SQLite writers) and pytest
# rewrites every test module, so without it each run compiles all of chatstate and the tests again
# (some 4 s of `make test-fast`).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast lint typecheck docs-build docs unit unit-fast test-redis-lowest bench redis-server chromium postgres-server clean

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

# The PostgreSQL tests use the server on 127.0.0.1:5432 when it answers, and otherwise start one
# with initdb from Debian's postgresql package: install it where neither is there.
postgres-server:
	@if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	fi
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "postgresql could not be installed" >&2; exit 1; }

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link or anchor, a page
# left out of the navigation, a docstring the API reference cannot render. Built into the venv's
# folder, so a check leaves nothing in the tree; it needs no network (no plugin fetches assets).
docs-build: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict --quiet --site-dir $(abspath $(VENV))/site

# The site at http://127.0.0.1:8000, rebuilt as the pages and docstrings change.
docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs serve --watch src

unit: $(VENV)/.installed-dev redis-server chromium postgres-server
	$(BIN)/pytest

test: lint typecheck docs-build unit test-redis-lowest

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

# The same checks (the docs' build among them) and every test that needs no server (markers `redis` and
# `postgres`), no browser (marker
# `browser`) and is not slow (marker `slow`: the stateful and fuzz runs of every store, a memory
# soak, a bench run), each property with a fifth of its hypothesis examples (the "fast" profile,
# tests/conftest.py); `make test` runs them all, in full. About 13 s of pytest on a quiet
# machine; the checks run beside it (mypy takes 5 s without its cache), each job's output shown
# whole as it ends.
unit-fast: $(VENV)/.installed-dev
	$(BIN)/pytest -m "not redis and not postgres and not slow and not browser" --hypothesis-profile=fast

test-fast: $(VENV)/.installed-dev
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint typecheck docs-build unit-fast

# `chatstate bench` on the in-memory and SQLite stores, a throw-away redis-server and a throw-away
# PostgreSQL server; ARGS="--quick" for a smoke run, ARGS="--json bench.json --plot bench.png" to
# keep the figures (see docs/benchmarks.md).
bench: $(VENV)/.installed-dev redis-server postgres-server
	$(BIN)/chatstate bench --redis-server --postgres-server $(ARGS)

clean:
	rm -rf $(VENV) $(VENV_LOWEST) .mypy_cache .ruff_cache .pytest_cache .hypothesis
