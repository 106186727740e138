# Every target sets up what it needs: a fresh clone runs `make test` with nothing but Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv test test-unit test-integration lint typecheck check bench bench-quick clean

help:
	@echo "make test       create .venv, install, run the whole suite (real PostgreSQL + Kafka-protocol broker)"
	@echo "make check      ruff + mypy (strict) + the whole suite, exactly what CI runs"
	@echo "make bench      capture benchmark, each figure next to its baseline (writes bench/results/)"
	@echo "make bench-quick the same, small (a smoke run)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check cdc server tests bench

typecheck: $(STAMP)
	@mkdir -p .typecheck/unified_profile
	@ln -sfn ../../cdc .typecheck/unified_profile/cdc
	@ln -sfn ../../server .typecheck/unified_profile/server
	$(VENV)/bin/mypy

check: lint typecheck test

bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
