# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Everything is installed into .venv from the pinned lock file (no network besides PyPI).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-fast lint typecheck demo lock emulator bench dist clean

$(STAMP): requirements-dev.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip >/dev/null
	$(PY) -m pip install -q --disable-pip-version-check "uv==$$(sed -n 's/^uv==//p' requirements-dev.lock)"
	$(UV) pip sync -q --python $(PY) requirements-dev.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	@# setuptools leaves an .egg-info here; with the repo on sys.path Airflow would see the package twice.
	rm -rf airflow_provider_qwenbatch.egg-info
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy airflow_provider_qwenbatch

# The whole suite: lint, mypy --strict on the package, unit + integration + system tests.
test: lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Quick local loop: skips the end-to-end tests on real Airflow processes.
test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not system" $(PYTEST_ARGS)

# Runs the main example DAG on the local emulator through a real Airflow (dag.test()).
demo: install
	$(PY) scripts/demo.py

emulator: install
	$(VENV)/bin/qwenbatch-emulator --port 8000

bench: install
	$(PY) -m benchmarks.run_all

lock:
	uv pip compile -q pyproject.toml --extra dev --extra emulator --python-version 3.11 -o requirements-dev.lock

# The sdist and wheel a release would upload (dist/), with their metadata checked by twine.
dist: install
	rm -rf dist build
	$(PY) -m build --sdist --wheel --outdir dist .
	@# setuptools leaves these behind; an .egg-info beside the package would make Airflow see it twice.
	rm -rf build airflow_provider_qwenbatch.egg-info
	$(VENV)/bin/twine check --strict dist/*

clean:
	rm -rf $(VENV) .demo .tmp dist build
