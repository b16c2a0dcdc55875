# canary-gate task runner: CI calls `make test` (through .ci/run).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dashboards venv system-deps kafka-jars kafka-start kafka-stop demo example test lint typecheck suite unit \
	bench lock clean

venv: $(STAMP)

# The native decoder (native/, Rust): cargo from PATH, else rustup's default place.
CARGO ?= $(shell command -v cargo || ls $$HOME/.cargo/bin/cargo /root/.cargo/bin/cargo 2>/dev/null | head -n 1)
NATIVE := native/Cargo.toml native/Cargo.lock native/pyproject.toml native/canary_gate_native.pyi \
	$(wildcard native/src/*.rs)

$(STAMP): pyproject.toml requirements.lock $(NATIVE)
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), "canary-gate needs Python 3.11 or 3.12 (bytewax 0.21 has no wheels for newer)"'
	@test -n "$(CARGO)" || { echo "canary-gate needs Rust (cargo) to build its native decoder: install it from https://rustup.rs (curl --proto '=https' -sSf https://sh.rustup.rs | sh), then run make venv again" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	PATH="$(abspath $(BIN)):$(dir $(CARGO)):$$PATH" MATURIN_PEP517_ARGS="--locked" \
	    $(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall ./native
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
	$(BIN)/pip freeze --exclude-editable | grep -v '^canary-gate-native' | sed '1i # Locked versions of every runtime and dev dependency (pip freeze of a working venv).\n# Regenerate: make lock' > requirements.lock

dashboards: venv
	$(BIN)/python dashboards/generate.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
