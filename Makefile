# Every target sets up what it needs: a fresh clone runs `make test` with nothing but Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# npm writes this file on every install: newer than package-lock.json means the deps are current.
NODE_DEPS := clients/node/node_modules/.package-lock.json

.PHONY: protos check-protos help venv node-deps demo test test-faults test-unit test-integration lint typecheck check bench bench-quick clean

help:
	@echo "make demo       create .venv, run everything on this machine with simulated customers and a live view"
	@echo "                (DEMO_ARGS=\"--rate 50 --people 5000\"; Ctrl-C stops it all)"
	@echo "make test       create .venv, install, run the suite (real PostgreSQL + Kafka-protocol broker;"
	@echo "                the longest fault tests only in make test-faults)"
	@echo "make test-faults the whole fault suite: crashes under load, outages, lost slots (tests/faults)"
	@echo "make check      proto drift + ruff + mypy (strict) + the whole suite, exactly what CI runs"
	@echo "make node-deps  install the Node.js client's dependencies (npm ci; make test does it)"
	@echo "make protos     regenerate the client's protobuf/gRPC modules from protos/"
	@echo "make bench      the benchmark suite: capture, apply, reads, fan-out, end to end, growth;"
	@echo "                each figure next to its baseline (writes bench/results/, ~30 min)"
	@echo "make bench-quick the same, small (a smoke run, about 3 minutes)"

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e clients/python -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# The node client's test (tests/integration/test_node_client.py) runs it with these installed.
$(NODE_DEPS): clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund
	@touch $(NODE_DEPS)

node-deps: $(NODE_DEPS)

# PostgreSQL, a Tansu broker, `unified-profile run`, a traffic simulator and a live view, under .demo/.
DEMO_ARGS ?=
demo: $(STAMP)
	$(PY) -m unified_profile.server.demo $(DEMO_ARGS)

# The fault suite's longest tests (marked faults_long) run only in `make test-faults`.
test: $(STAMP) $(NODE_DEPS)
	$(PY) -m pytest -q -m "not faults_long"

test-faults: $(STAMP)
	$(PY) -m pytest -q tests/faults

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP) $(NODE_DEPS)
	$(PY) -m pytest -q tests/integration

lint: $(STAMP) check-protos
	$(VENV)/bin/ruff check cdc server tests bench scripts examples clients

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

check-protos: $(STAMP)
	$(PY) scripts/gen_protos.py --check

typecheck: $(STAMP)
	@mkdir -p .typecheck/unified_profile
	@ln -sfn ../../cdc .typecheck/unified_profile/cdc
	@ln -sfn ../../server .typecheck/unified_profile/server
	@ln -sfn ../../clients/python/unified_profile/v1 .typecheck/unified_profile/v1
	@ln -sfn ../clients/python/unified_profile_client .typecheck/unified_profile_client
	$(VENV)/bin/mypy

check: lint typecheck test

bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
