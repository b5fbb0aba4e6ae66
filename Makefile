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

.PHONY: gonogo setup test test-all lint format studio bundles bundle-codec bundle-generator bundle-arc

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

# Rebuilds every bundled model from scratch (resumable: rerun after an interruption), in three parts:
# `bundle-codec`, `bundle-generator` (embedders and the base generator, over assets/codec) and `bundle-arc`.
BUNDLE_WORK ?= .cache/bundles
SL := $(VENV)/bin/soundloom
bundles: bundle-codec bundle-generator bundle-arc

bundle-codec: setup
	$(SL) dataset build --out $(BUNDLE_WORK)/corpus --hours 3 --seed 0
	$(SL) train --recipe codec --data $(BUNDLE_WORK)/corpus --out $(BUNDLE_WORK)/codec-run-i \
		--config training/configs/codec.json --resume
	$(SL) bundle export --run $(BUNDLE_WORK)/codec-run-i --data $(BUNDLE_WORK)/corpus --out assets/codec
	$(SL) bench codec --data $(BUNDLE_WORK)/corpus --json $(BUNDLE_WORK)/bench/codec.json --update-card

bundle-generator: setup
	$(SL) dataset build --out $(BUNDLE_WORK)/corpus --hours 3 --seed 0
	$(SL) dataset encode $(BUNDLE_WORK)/corpus
	$(SL) train --recipe judge-embedder --data $(BUNDLE_WORK)/corpus --out $(BUNDLE_WORK)/judge-run \
		--config training/configs/judge_embedder.json --resume
	$(SL) bundle export --run $(BUNDLE_WORK)/judge-run --data $(BUNDLE_WORK)/corpus --out assets/judge
	$(SL) eval --model assets/judge --data $(BUNDLE_WORK)/corpus --json $(BUNDLE_WORK)/bench/judge-eval.json \
		--update-card
	$(SL) train --recipe ssl-embedder --data $(BUNDLE_WORK)/corpus --out $(BUNDLE_WORK)/ssl-run \
		--config training/configs/ssl_embedder.json --resume
	$(SL) bundle export --run $(BUNDLE_WORK)/ssl-run --data $(BUNDLE_WORK)/corpus --out assets/ssl-embedder
	$(SL) eval --model assets/ssl-embedder --data $(BUNDLE_WORK)/corpus --json $(BUNDLE_WORK)/bench/ssl-eval.json \
		--update-card
	$(SL) dataset build --out $(BUNDLE_WORK)/notes --hours 2 --seed 1 --categories note --latents
	$(SL) train --recipe static --data $(BUNDLE_WORK)/corpus --out $(BUNDLE_WORK)/static-run \
		--config training/configs/static.json --set 'recipe.extra_data=["$(BUNDLE_WORK)/notes"]' --resume
	$(SL) bundle export --run $(BUNDLE_WORK)/static-run --data $(BUNDLE_WORK)/corpus --out $(BUNDLE_WORK)/generator-static
	# second stage: the rhythm features grown on the static model (pipelines/dit.py, rhythm_harmonics)
	$(SL) train --recipe static --init $(BUNDLE_WORK)/generator-static --data $(BUNDLE_WORK)/corpus \
		--out $(BUNDLE_WORK)/rhythm-run --config training/configs/rhythm.json \
		--set 'recipe.extra_data=["$(BUNDLE_WORK)/notes"]' --resume
	$(SL) bundle export --run $(BUNDLE_WORK)/rhythm-run --data $(BUNDLE_WORK)/corpus --out $(BUNDLE_WORK)/generator-base
	# shipped as an int8 copy (half the bytes; it loads as float): ARC post-trains the fp16 export above
	$(SL) bundle quantize $(BUNDLE_WORK)/generator-base --out assets/generator-base
	$(SL) eval --model assets/generator-base --prompts assets/prompts/dev.jsonl --data $(BUNDLE_WORK)/corpus \
		--json $(BUNDLE_WORK)/bench/generator-base-eval.json --update-card
	$(SL) bench generate --model assets/generator-base --json $(BUNDLE_WORK)/bench/generate-base.json

# ARC post-training of the base (issue 5): the 8-step ping-pong default in assets/generator.
bundle-arc: setup
	$(SL) train --recipe arc --init $(BUNDLE_WORK)/generator-base --data $(BUNDLE_WORK)/corpus --out $(BUNDLE_WORK)/arc-run \
		--config training/configs/arc.json --set 'recipe.extra_data=["$(BUNDLE_WORK)/notes"]' --resume
	$(SL) bundle export --run $(BUNDLE_WORK)/arc-run --data $(BUNDLE_WORK)/corpus --out assets/generator
	$(SL) eval --model assets/generator --prompts assets/prompts/dev.jsonl --data $(BUNDLE_WORK)/corpus \
		--json $(BUNDLE_WORK)/bench/generator-eval.json --update-card
	$(SL) bench generate --model assets/generator --json $(BUNDLE_WORK)/bench/generate.json

# The generator's go/no-go: 30 minutes of the static recipe on pitched notes alone (a corpus of 2 hours of
# single notes, ~2000 clips, so every pitch is heard with many instruments and phrasings), then pitch
# accuracy on the dev set's note prompts (issue 3: >= 40% or change the design before scaling up).
gonogo: setup
	$(SL) dataset build --out $(BUNDLE_WORK)/notes --hours 2 --seed 1 --categories note --latents
	$(SL) train --recipe static --data $(BUNDLE_WORK)/notes --out $(BUNDLE_WORK)/gonogo-run-g \
		--config training/configs/static_notes.json --resume
	$(SL) bundle export --run $(BUNDLE_WORK)/gonogo-run-g --data $(BUNDLE_WORK)/notes \
		--out $(BUNDLE_WORK)/gonogo-bundle
	grep '"category": "note"' assets/prompts/dev.jsonl > $(BUNDLE_WORK)/note-prompts.jsonl
	$(SL) eval --model $(BUNDLE_WORK)/gonogo-bundle --prompts $(BUNDLE_WORK)/note-prompts.jsonl \
		--data $(BUNDLE_WORK)/notes --json $(BUNDLE_WORK)/bench/gonogo-eval.json

studio: setup
	$(SL) studio
