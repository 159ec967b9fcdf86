# Conveyor: `make run` to try it, `make test` before you push. `make help` lists the rest.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
export CONVEYOR_IMPORTS ?= conveyor.workloads.demo

.PHONY: help install run test lint format bench lock clean

help:  ## List the targets.
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)  ## Create the virtualenv and install the locked dependencies.

run: install  ## Start Conveyor (HTTP API + worker) on ./conveyor.db with the demo kinds.
	@echo "Conveyor: http://$${CONVEYOR_HOST:-127.0.0.1}:$${CONVEYOR_PORT:-8000}  API docs: http://$${CONVEYOR_HOST:-127.0.0.1}:$${CONVEYOR_PORT:-8000}/docs"
	@$(BIN)/conveyor bootstrap-demo
	@echo "Database: $${CONVEYOR_DATABASE_URL:-sqlite:///./conveyor.db}. Ctrl-C stops it gracefully."
	@$(BIN)/conveyor serve

lint: install  ## ruff (lint + format check) and mypy --strict.
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install  ## Apply ruff's fixes and formatting.
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

test: lint  ## Lint, then the whole test suite.
	$(BIN)/python -m pytest

bench: install  ## Throughput and latency benchmarks (figures go to docs/benchmarks.md).
	$(BIN)/python -m bench
	$(BIN)/python -m bench.events

lock:  ## Re-pin requirements.lock from pyproject.toml.
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:  ## Remove the virtualenv and caches.
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
