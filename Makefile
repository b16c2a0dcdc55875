# canary-gate task runner: CI calls `make test` (through .ci/run).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dashboards venv system-deps kafka-jars kafka-start kafka-stop demo example test lint typecheck suite unit \
	bench lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), "canary-gate needs Python 3.11 or 3.12 (bytewax 0.21 has no wheels for newer)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

# First README command: judge the bundled example stream (no broker needed).
example: venv
	@mkdir -p out
	$(BIN)/canary-gate run --config examples/rollout.toml --source examples/telemetry.jsonl.gz \
	    --verdicts out/verdicts.jsonl --board on

# Debian packages the integration tests run for real (Prometheus, promtool).
system-deps:
	bash scripts/install-system-deps.sh

# Apache Kafka broker jars from Maven Central (cached in ~/.m2 and kafka-broker/libs).
kafka-jars: system-deps
	mvn -q -B -f kafka-broker/pom.xml package

# A local single-node broker on 127.0.0.1:9092 (reused if running); prints its address.
kafka-start: kafka-jars
	@python3 kafka-broker/broker.py start

kafka-stop:
	@python3 kafka-broker/broker.py stop

# Broker + generator (healthy, then a us-east regression) + pipeline with board and /metrics.
demo: venv system-deps kafka-jars
	bash scripts/demo.sh

# Second README command: everything CI runs.
test: venv system-deps kafka-jars lint typecheck suite

lint: venv
	$(BIN)/ruff check pipeline tests bench dashboards deploy

typecheck: venv
	$(BIN)/mypy

# The whole pytest suite: unit, flow and integration tests (a real broker, Prometheus, subprocess runs).
suite: venv
	$(BIN)/python -m pytest -q

# The pure core and in-process dataflow tests only, in seconds: no broker, no Prometheus,
# no subprocess runs (tests marked `integration` or `slow` are left out; see tests/conftest.py).
unit: venv
	$(BIN)/python -m pytest -q -m "not integration and not slow"

bench: venv
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/memory.py

lock: venv
	$(BIN)/pip freeze --exclude-editable | sed '1i # Locked versions of every runtime and dev dependency (pip freeze of a working venv).\n# Regenerate: make lock' > requirements.lock

dashboards: venv
	$(BIN)/python dashboards/generate.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
