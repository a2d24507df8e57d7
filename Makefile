# Fresh machine: only python3 (3.10+) and make are assumed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint train bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)  ## set up and run the test suite
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check rnnchar tests

clean:
	rm -rf $(VENV) build *.egg-info rnnchar.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

CONFIG ?= lstm
train: $(STAMP)  ## set up and train the bundled default (resumes a finished or interrupted run)
	@if [ -f runs/$(CONFIG)/last.npz ]; then resume=--resume; fi; \
	$(BIN)/rnnchar train --config $(CONFIG) $$resume
	$(BIN)/rnnchar sample --temp 0.7 -n 10

BENCH_ARGS ?=
TORCH_PYTHON ?=
bench: $(STAMP)  ## speed, memory and quality benchmarks, JSON lines on stdout (TORCH_PYTHON=python with torch: vs torch_ref)
	@$(BIN)/python -m rnnchar.bench $(if $(TORCH_PYTHON),--torch-python $(TORCH_PYTHON)) $(BENCH_ARGS)
