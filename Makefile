# Weflux backend. `make help` lists the targets.
#
# Everything installs from uv.lock into .venv with uv, which this Makefile bootstraps
# (pinned, in .tools/) with the system's python3: a fresh machine needs Python 3.11+ and
# make, nothing else. uv never downloads a Python of its own here. `make lint` also needs
# Node.js 20+ with npm: its schema linter installs from package-lock.json into node_modules,
# as does graphql-ws for the frontends' client tests (`make test` installs it when npm is
# there; without it those tests skip, and fail under CI=true).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TOOLS := .tools
NPM ?= npm
UV_VERSION := 0.13.9
UV := $(TOOLS)/bin/uv
HOST ?= 127.0.0.1
PORT ?= 8000
# The fast loop: SQLite and the in-process store/broker, no PostgreSQL or Redis needed.
FAST := not postgres and not redis
# Test workers: one per core (pytest-xdist); TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= auto

export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON_PREFERENCE := only-system

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The app's own dependencies; --inexact keeps the test tools of an earlier `make test`.
$(VENV)/.installed: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --inexact
	@touch $@

# The app and its test, lint and type-check tools, exactly as locked.
$(VENV)/.installed-test: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --extra test
	@touch $@ $(VENV)/.installed

# The Node tools of `make lint` (graphql-schema-linter) and of the frontends' client tests
# (graphql-ws, ws), exactly as package-lock.json pins them; no install scripts run.
node_modules/.installed: package.json package-lock.json
	@command -v $(NPM) >/dev/null || { echo "make: npm (Node.js 20+) is needed for the schema linter of make lint" >&2; exit 1; }
	$(NPM) ci --ignore-scripts --no-audit --no-fund
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install the project from uv.lock

.PHONY: install-test
install-test: $(VENV)/.installed-test ## Create .venv with the test tools, from uv.lock

.PHONY: install-node
install-node: node_modules/.installed ## Install the Node tools (schema linter, graphql-ws for its tests) from package-lock.json

.PHONY: lock
lock: $(UV) ## Re-resolve uv.lock after a change of pyproject.toml's dependencies
	$(UV) lock

.PHONY: lock-check
lock-check: $(UV) ## Fail when uv.lock does not match pyproject.toml
	$(UV) lock --check

.PHONY: run
run: $(VENV)/.installed ## Migrate and serve the API on http://127.0.0.1:8000 (embedded defaults)
	$(BIN)/weflux serve --host $(HOST) --port $(PORT)

# The browser of the sandbox page's test (tests/sandbox/test_page_browser.py): Debian's
# Chromium at /usr/bin/chromium, driven by Playwright (whose own download is never used).
CHROMIUM ?= /usr/bin/chromium

.PHONY: chromium
chromium: ## Install Debian's Chromium for the browser test when missing (apt-get, as root)
	@if [ -x "$(CHROMIUM)" ]; then exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make: installing chromium (apt-get) for the sandbox page's browser test"; \
		apt-get install -y --no-install-recommends chromium || \
			(apt-get update && apt-get install -y --no-install-recommends chromium) || \
			echo "make: chromium could not be installed: the browser test will skip (fail under CI=true)" >&2; \
	else \
		echo "make: no $(CHROMIUM): the browser test will skip (and fail under CI=true)." >&2; \
		echo "      Install it with: sudo apt-get install -y chromium (Debian/Ubuntu)," >&2; \
		echo "      or point CHROMIUM=... and WEFLUX_TEST_CHROMIUM=... at a Chromium binary." >&2; \
	fi

# The graphql-ws client's tests (tests/gql/test_graphql_ws_client.py) run under Node with
# node_modules: installed when npm is there, as `make install-node` does.
.PHONY: graphql-ws
graphql-ws: ## Install graphql-ws (node_modules) for its tests when npm is there (they skip without it, fail under CI=true)
	@if command -v $(NPM) >/dev/null; then \
		$(MAKE) --no-print-directory --silent node_modules/.installed || \
			echo "make: node_modules could not be installed: the graphql-ws tests will skip (fail under CI=true)" >&2; \
	else \
		echo "make: no npm: the graphql-ws tests will skip (and fail under CI=true)." >&2; \
		echo "      Install Node.js 20+ with npm (Debian/Ubuntu: sudo apt-get install -y nodejs npm)." >&2; \
	fi

.PHONY: test
test: $(VENV)/.installed-test chromium graphql-ws ## Run the whole test suite on every core (PostgreSQL/Redis/Chromium/Node tests skip when absent, fail under CI=true)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: $(VENV)/.installed-test ## Run the tests that need neither PostgreSQL nor Redis (-m "not postgres and not redis")
	$(BIN)/pytest -m "$(FAST)" $(PYTEST_ARGS)

.PHONY: lint
lint: $(VENV)/.installed-test node_modules/.installed ## What pre-commit and CI check: format, lint, types, schema drift and lint, structure
	$(BIN)/pre-commit run --all-files

.PHONY: fmt
fmt: $(VENV)/.installed-test ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: hooks
hooks: $(VENV)/.installed-test node_modules/.installed ## Install the git pre-commit hook (the checks of `make lint`)
	$(BIN)/pre-commit install

.PHONY: schema-lint
schema-lint: node_modules/.installed ## Lint schema.graphql (graphql-schema-linter, graphql-schema-linter.config.js)
	node_modules/.bin/graphql-schema-linter

.PHONY: schema
# `python -m`: the checkout's code, also in a git worktree sharing another checkout's .venv.
schema: $(VENV)/.installed ## Regenerate schema.graphql
	$(BIN)/python -m weflux export-schema

.PHONY: migrate
migrate: $(VENV)/.installed ## Apply database migrations
	$(BIN)/weflux migrate

.PHONY: ci
ci: ## What CI runs, in a fresh virtual environment
	bash .ci/run

.PHONY: clean
clean: ## Remove the virtual environments and local data under var/
	rm -rf $(VENV) $(TOOLS) node_modules var .pytest_cache .mypy_cache .ruff_cache
