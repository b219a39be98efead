# EchoForge — two set-up commands: `make demo` (the main job on the phantom default) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock constraints.txt | sha256sum | cut -c1-12)

# Project-local state, analytics off (ARCHITECTURE.md conventions).
export PATH := $(BIN):$(PATH)
export PREFECT_HOME := $(CURDIR)/.prefect
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/site-cache
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo data repro test test-fast lint bench clean-outputs

venv: $(STAMP)

$(STAMP):
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c requirements.lock -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

## The main job: materialise the phantom raw data (matching data.dvc), then run the whole DVC pipeline.
demo: venv data repro
	@echo "demo finished: see README 'What to look at'"

## Raw data: from the DVC remote/cache if it has it, else regenerated deterministically from params.yaml.
data: venv
	@bash infra/scripts/materialize_data.sh

repro: venv
	bash infra/scripts/repro.sh

test: venv
	$(BIN)/pytest -q -p no:cacheprovider -n 3 --dist loadfile --durations=25

test-fast: venv
	$(BIN)/pytest -q -p no:cacheprovider -n 3 --dist loadfile -m "not slow"

lint: venv
	$(BIN)/ruff check .

## Every benchmark at its CPU-sized default -> benchmarks/results/*.json and plots (hours on 2 cores; each JSON
## is written by its script only). The sampling, evaluation and learning ones judge the demo's own models and
## data: run `make demo` first. GPU figures: benchmarks/gpu_all.sh on a GPU machine.
bench: venv
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/encode.py
	$(BIN)/python benchmarks/encode.py --vae reference --videos 3 --frames 28 60 --threads 2
	$(BIN)/python benchmarks/train.py --switches
	$(BIN)/python benchmarks/sample.py --model models:/echo-lvdm@candidate --frames 192 --batch 1 --videos 4
	$(BIN)/python benchmarks/sampling_quality.py --out-root outputs --threads 2
	$(BIN)/python benchmarks/evaluate.py
	$(BIN)/python benchmarks/learning.py
	$(BIN)/python benchmarks/faults.py
	$(BIN)/python benchmarks/setup_times.py
