# rayfin: `make demo` runs the embedded default, `make test` runs the test suite.
# Both create .venv and install the project on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps check demo test test-serial test-unit test-ledger test-integration test-gpu bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and exactly: the CPU wheel is on this machine; a looser pin pulls CUDA wheels.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# PostgreSQL, Redis and Prometheus from the system's packages: the tests start their own servers
# from them (tests/conftest.py). Installs only what is missing; a no-op otherwise.
system-deps:
	bash .ci/system-deps.sh

demo: install
	$(BIN)/rayfin demo

# Lint, types and import layers (pyproject.toml: [tool.ruff], [tool.mypy], [tool.importlinter]);
# under a minute, and run before any test.
check: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# Two pytest-xdist workers on two lanes (tests/support/lanes.py): the integration tests in one,
# in collection order, one Ray cluster at a time; the tiers without Ray in the other.
test: check system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 tests

# The same tests in one process.
test-serial: check system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-ledger: install system-deps
	$(BIN)/python -m pytest -q tests/ledger

test-integration: install system-deps
	$(BIN)/python -m pytest -q tests/integration

test-gpu: install
	RAYFIN_GPU_TESTS=1 $(BIN)/python -m pytest -q tests/gpu

clean:
	rm -rf $(VENV) build *.egg-info
