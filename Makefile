# trading-bot-ml — `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.9.5
LOCK := requirements/dev.lock
STAMP := $(VENV)/.installed
PAIR ?= BTC
CHROMIUM ?= /usr/bin/chromium
UI_PORT ?= 5000
DEMO_INTERVAL ?= 3
BACKTEST_PAIRS ?= BTC
BACKTEST_MODEL ?= lightgbm
BACKTEST_START ?= 2023-01-01
BACKTEST_END ?= 2023-12-30
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help install browser run demo backtest test test-fast lint audit format bench ui train migrate lock clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install the project with its dev tools (quick when nothing changed)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV) pip sync --quiet --compile-bytecode --python $(PY) $(LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps --editable .
	@touch $(STAMP)

browser: ## Debian's Chromium for the dashboard's browser tests (apt-get, as root, when missing)
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "no Chromium at $(CHROMIUM): the browser tests need it; as root run" \
			"'apt-get install -y chromium' (or 'sudo make browser')" >&2; exit 1; \
	fi; \
	command -v apt-get >/dev/null || { echo "no apt-get here: install Chromium so that" \
		"$(CHROMIUM) exists (or pass CHROMIUM=/path/to/chromium)" >&2; exit 1; }; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

run: install ## Set up everything, train the bundled pairs if the registry is empty, serve on :3001
	$(VENV)/bin/tbml up

demo: install ## The whole loop offline: a replay exchange releases a real candle every DEMO_INTERVAL s
	$(VENV)/bin/tbml demo --interval $(DEMO_INTERVAL)

backtest: install ## Replay the lifecycle over past candles with fees (BACKTEST_PAIRS=BTC, _START, _END, _MODEL)
	$(VENV)/bin/tbml backtest --pairs $(BACKTEST_PAIRS) --model-type $(BACKTEST_MODEL) \
		--start $(BACKTEST_START) --end $(BACKTEST_END)

train: install ## Train one pair fully, register it, apply the promotion gate (PAIR=BTC)
	$(VENV)/bin/tbml train --pair $(PAIR)

ui: install ## MLflow UI (runs, plots, registry) on the service's tracking store, port UI_PORT=5000
	@uri="$$($(PY) -c 'from pipelines.settings import get_settings as g; print(g().tracking_uri)')"; \
	root="$$($(PY) -c 'from pipelines.settings import get_settings as g; print(g().artifact_root)')"; \
	shown="$$($(PY) -c 'import sys; from pipelines.redact import redact; print(redact(sys.argv[1]))' "$$uri")"; \
	echo "MLflow UI: http://127.0.0.1:$(UI_PORT)  (store $$shown; Ctrl-C stops it)"; \
	$(VENV)/bin/mlflow ui --backend-store-uri "$$uri" --default-artifact-root "$$root" \
		--host 127.0.0.1 --port $(UI_PORT) --workers 1

migrate: install ## Bring the service database to the newest schema (alembic upgrade head)
	$(VENV)/bin/alembic upgrade head

test: install browser ## Run the test suite (installs first if needed, Chromium included)
	TBML_CHROMIUM=$(CHROMIUM) $(PY) -m pytest

test-fast: install browser ## Run the tests not marked slow
	TBML_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -m "not slow"

lint: install audit ## Ruff (lint and format check), mypy and the dependency audit
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

audit: install ## Known vulnerabilities of the locked dependencies (pip-audit, PyPI's data)
	@# One lock a run: pip-audit refuses a package pinned twice. Ignored IDs and their reasons:
	@# requirements/audit-ignore.txt.
	for lock in requirements/service.lock requirements/dev.lock; do \
		$(PY) requirements/audit.py $$lock || exit 1; \
	done

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install ## Run the benchmarks in bench/ and print their tables
	$(PY) -m bench

lock: ## Re-resolve requirements/*.lock from pyproject.toml (needs the network)
	@test -x $(UV) || { $(PYTHON_BOOT) -m venv $(VENV) && $(PY) -m pip install --quiet "uv==$(UV_VERSION)"; }
	$(UV) pip compile --quiet --universal --python-version 3.11 --extra train --extra dev pyproject.toml -o requirements/dev.lock
	$(UV) pip compile --quiet --universal --python-version 3.11 pyproject.toml -o requirements/service.lock

clean: ## Remove the virtual environment and caches (keeps data and MLflow stores)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
