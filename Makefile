# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Everything is installed into .venv from the pinned lock file (no network besides PyPI).
#
# Other Airflow minors / Pythons (see the README, "Compatibility"):
#   make test-fast AIRFLOW=3.1            # .venv-af31 from locks/airflow-3.1.lock
#   make test-fast PYTHON=python3.13      # .venv (newest Airflow) on Python 3.13
#   make test-compat                      # every older minor + Python 3.10/3.12/3.13, measured
SHELL := /bin/bash
# The newest supported Airflow minor: the one requirements-dev.lock pins.
NEWEST_AIRFLOW := 3.3
# 3.0 and 3.2 are not proven yet (README, Compatibility; locks/airflow-3.{0,2}.constraints.txt).
OLDER_AIRFLOWS := 3.1
AIRFLOW ?= $(NEWEST_AIRFLOW)
PYTHON ?= python3
ifeq ($(AIRFLOW),$(NEWEST_AIRFLOW))
VENV ?= .venv
LOCK := requirements-dev.lock
else
VENV ?= .venv-af$(subst .,,$(AIRFLOW))
LOCK := locks/airflow-$(AIRFLOW).lock
endif
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The lock is universal (uv pip compile --universal): one file for every supported Python.
LOCK_PYTHON := 3.10
COMPILE = .venv/bin/uv pip compile -q pyproject.toml --extra dev --extra emulator --universal --python-version $(LOCK_PYTHON)

.PHONY: install test test-fast test-compat lint typecheck demo lock emulator bench dist clean

# The venv is rebuilt, saying why, when its Python or its lock no longer matches: the stamp
# records both (a .venv made with another Python used to stick until `make clean`).
install:
	@$(SHELL) scripts/ensure_venv.sh "$(PYTHON)" "$(VENV)" "$(LOCK)"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy airflow_provider_qwenbatch benchmarks

# The whole suite: lint, mypy --strict on the package and benchmarks, unit + integration + system tests.
# Its counts (.tmp/junit-test.xml) are the newest Airflow's row of `make test-compat`'s table.
test: lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider --junitxml=.tmp/junit-test.xml $(PYTEST_ARGS)

# Quick local loop: skips the end-to-end tests on real Airflow processes.
test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not system" $(PYTEST_ARGS)

# Older Airflow minors (unit + integration + a system subset, one venv each) and Python
# 3.10/3.12/3.13 (install + unit tests); writes .tmp/compat-summary.md (the README's table).
test-compat:
	python3 scripts/test_compat.py --airflows "$(OLDER_AIRFLOWS)" --pythons "3.10 3.12 3.13"

# Runs the main example DAG on the local emulator through a real Airflow (dag.test()).
demo: install
	$(PY) scripts/demo.py

emulator: install
	$(VENV)/bin/qwenbatch-emulator --port 8000

bench: install
	$(PY) -m benchmarks.run_all

# requirements-dev.lock pins the newest Airflow; locks/airflow-X.Y.lock the older minors, each
# constrained by locks/airflow-X.Y.constraints.txt (its Airflow patch and the pins it needs).
lock:
	$(MAKE) --no-print-directory install AIRFLOW=$(NEWEST_AIRFLOW) VENV=.venv
	$(COMPILE) -o requirements-dev.lock
	for m in $(OLDER_AIRFLOWS); do \
	  $(COMPILE) -c locks/airflow-$$m.constraints.txt -o locks/airflow-$$m.lock || exit 1; \
	done

# The sdist and wheel a release would upload (dist/), with their metadata checked by twine.
dist: install
	rm -rf dist build
	$(PY) -m build --sdist --wheel --outdir dist .
	@# setuptools leaves these behind; an .egg-info beside the package would make Airflow see it twice.
	rm -rf build airflow_provider_qwenbatch.egg-info
	$(VENV)/bin/twine check --strict dist/*

clean:
	rm -rf .venv .venv-af* .venv-py* .demo .tmp dist build
