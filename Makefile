# Conveyor: `make run` to try it, `make test` before you push. `make help` lists the rest.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
export CONVEYOR_IMPORTS ?= conveyor.kinds.demo

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

run: install  ## Start a worker with the demo kinds on ./conveyor.db and enqueue a few jobs.
	@$(BIN)/conveyor migrate
	@echo "enqueued demo jobs:" \
	  $$($(BIN)/conveyor enqueue demo.echo --payload '{"hello": "world"}') \
	  $$($(BIN)/conveyor enqueue demo.sleep --payload '{"seconds": 3}') \
	  $$($(BIN)/conveyor enqueue demo.flaky --payload '{"fail_times": 2}') \
	  $$($(BIN)/conveyor enqueue demo.discard)
	@echo "worker starting on $${CONVEYOR_DATABASE_URL:-sqlite:///./conveyor.db}; in another terminal:"
	@echo "  $(BIN)/conveyor queues    $(BIN)/conveyor jobs list    $(BIN)/conveyor jobs show 3"
	@echo "Ctrl-C stops it gracefully."
	@$(BIN)/conveyor worker

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

lock:  ## Re-pin requirements.lock from pyproject.toml.
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:  ## Remove the virtualenv and caches.
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
