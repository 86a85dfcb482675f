# Everything a fresh machine needs comes from these targets; `make run` and `make test` set up first.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := $(CURDIR)/.tools/bin/uv
RUN := $(UV) run --frozen --all-packages
# Never let uv fetch a Python from the internet: the machine's python3 (3.11+) is the one.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= python3

.PHONY: help setup run test lint format typecheck proto proto-check docs pytest deploy-check bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-13s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

.venv/.setup-stamp: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen --all-packages
	touch $@

# The outside tests' npm packages (TypeScript SDK, conformance runner, Inspector), pinned by their
# lock file. Without npm the Python part still installs and those tests skip (fail under CI=true).
TS_CLIENT := tests/outside/ts-client
$(TS_CLIENT)/node_modules/.setup-stamp: $(TS_CLIENT)/package-lock.json $(TS_CLIENT)/package.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(TS_CLIENT) --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; \
	else \
		echo "setup: npm not found, so $(TS_CLIENT) is not installed (its tests will skip)"; \
	fi

# The portal's browser tests: Debian's Chromium (installed when missing and we are root, as in CI) and
# axe-core from npm (pinned by its lock file). Without them those tests skip (fail under CI=true).
PORTAL_JS := tests/portal/js
CHROMIUM := /usr/bin/chromium
.PHONY: browser
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y --no-install-recommends chromium \
				|| { apt-get update && apt-get install -y --no-install-recommends chromium; }; \
		else \
			echo "setup: $(CHROMIUM) is missing and we are not root: the portal's browser tests will skip"; \
		fi; \
	fi

$(PORTAL_JS)/node_modules/.setup-stamp: $(PORTAL_JS)/package-lock.json $(PORTAL_JS)/package.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(PORTAL_JS) --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; \
	else \
		echo "setup: npm not found, so $(PORTAL_JS) (axe-core) is not installed (browser tests will skip)"; \
	fi

setup: .venv/.setup-stamp $(TS_CLIENT)/node_modules/.setup-stamp browser $(PORTAL_JS)/node_modules/.setup-stamp ## Install everything the project needs (idempotent)

run: setup ## Start the whole stack on embedded defaults; prints the MCP URL and a demo token
	$(RUN) imagegen dev

test: setup lint typecheck proto-check deploy-check pytest ## Lint, type-check, check contracts and deployment, run every test

lint: setup ## ruff check and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: setup ## Apply ruff's fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

typecheck: setup ## mypy, strict
	$(RUN) mypy

proto: setup ## Regenerate the Python stubs from proto/ (the one way to change them)
	$(RUN) scripts/proto.sh

docs: setup ## Regenerate the README's configuration table from the settings classes
	$(RUN) imagegen settings --write-readme README.md

proto-check: setup ## buf lint, and fail when the committed stubs are stale
	$(RUN) buf lint
	$(RUN) scripts/proto.sh --check

deploy-check: setup ## Validate Dockerfiles, docker-compose.yml and the Kubernetes overlays
	@if [ -x scripts/deploy-check.sh ]; then $(RUN) scripts/deploy-check.sh; else echo "deploy-check: nothing to check yet"; fi

pytest: setup ## The test suite, in parallel
	$(RUN) pytest -n auto --dist loadgroup

bench: setup ## Benchmarks (print numbers with a same-run baseline)
	@for b in bench/*.py; do echo "== $$b"; $(RUN) python $$b; done

clean: ## Remove the environment and caches
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache $(TS_CLIENT)/node_modules
