# soundloom: `make test` sets up and runs the tests; `make studio` opens the studio.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: setup test test-all lint format studio bundles

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps tinysoundfont
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup lint
	$(VENV)/bin/pytest -q

test-all: setup lint
	$(VENV)/bin/pytest -q -m ""

# Rebuilds every bundled model from scratch (resumable: rerun after an interruption).
BUNDLE_WORK ?= .cache/bundles
bundles: setup
	$(VENV)/bin/soundloom dataset build --out $(BUNDLE_WORK)/corpus --hours 3 --seed 0
	$(VENV)/bin/soundloom train --recipe codec --data $(BUNDLE_WORK)/corpus --out $(BUNDLE_WORK)/codec-run-i \
		--config training/configs/codec.json --resume
	$(VENV)/bin/soundloom bundle export --run $(BUNDLE_WORK)/codec-run-i --data $(BUNDLE_WORK)/corpus --out assets/codec
	$(VENV)/bin/soundloom bench codec --data $(BUNDLE_WORK)/corpus --json $(BUNDLE_WORK)/bench/codec.json --update-card

studio: setup
	$(VENV)/bin/soundloom studio
