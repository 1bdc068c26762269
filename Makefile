# The two commands: `make run` and `make test`. Both create .venv and install the
# project into it when needed, so a fresh machine with Python 3.11 needs nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers: the tests mostly wait (servers, subprocesses, simulators), so 3
# workers beat 2 on CI's 2 cores (protocol+devices+branch_agent: 238 s with 2, 187 s with
# 3, 178 s with 4; whole suite 11 min with 3 against 22 in one process); worksteal
# keeps the slow tests spread over them.
# PYTEST_XDIST="-n 0" runs in one process.
PYTEST_XDIST ?= -n 3 --dist worksteal
# e.g. make run DEMO_ARGS="--port 8080 --nats-port 4333 --agent-base-port 8201 --device-base-port 22010"
# (or BACKROOM_DEMO_PORT, _NATS_PORT, _AGENT_BASE_PORT, _DEVICE_BASE_PORT in the environment)
DEMO_ARGS ?=

.PHONY: run test lint typecheck pytest bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m central demo --data-dir var/demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check central branch_agent protocol devices migrations bench tests
	$(BIN)/ruff format --check central branch_agent protocol devices migrations bench tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_XDIST) $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	@for b in $$(ls bench/*.py | grep -v __init__ | sed 's#bench/##; s#\.py##'); do \
		echo "== bench.$$b"; $(BIN)/python -m bench.$$b || exit 1; done

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
