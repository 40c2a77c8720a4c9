# Weflux backend. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install the project

.PHONY: run
run: $(VENV)/.installed ## Migrate and serve the API on http://127.0.0.1:8000 (embedded defaults)
	$(BIN)/weflux serve --host $(HOST) --port $(PORT)

.PHONY: test
test: $(VENV)/.installed-test ## Run the whole test suite (PostgreSQL/Redis tests skip when absent, fail under CI=true)
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(VENV)/.installed-test ## ruff format --check, ruff check, mypy
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy weflux

.PHONY: fmt
fmt: $(VENV)/.installed-test ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: schema
schema: $(VENV)/.installed ## Regenerate schema.graphql
	$(BIN)/weflux export-schema

.PHONY: migrate
migrate: $(VENV)/.installed ## Apply database migrations
	$(BIN)/weflux migrate

.PHONY: ci
ci: ## What CI runs, in a fresh virtual environment
	bash .ci/run

.PHONY: clean
clean: ## Remove the virtual environment and local data under var/
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
