# keyguard: `make run` brings up the local stack, `make test` runs every check.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install protos fmt lint typecheck test unit run serve bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml tools/bootstrap.sh
	./tools/bootstrap.sh

protos: $(STAMP)
	$(BIN)/python tools/genprotos.py src

fmt: $(STAMP)
	$(BIN)/ruff format src tests tools bench harness
	$(BIN)/ruff check --fix src tests tools bench harness

lint: $(STAMP)
	$(BIN)/ruff format --check src tests tools bench harness
	$(BIN)/ruff check src tests tools bench harness

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The whole local stack: Redis, keyguard, a demo LLM upstream and Envoy on :10000.
run: $(STAMP)
	$(BIN)/python tools/devstack.py

# keyguard alone, against the Redis at KEYGUARD_REDIS_URL.
serve: $(STAMP)
	$(BIN)/keyguard serve

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist src/*.egg-info
