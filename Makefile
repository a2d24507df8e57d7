# Fresh machine: only python3 (3.10+) and make are assumed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint train bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)  ## set up and run the test suite
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check rnnchar tests

clean:
	rm -rf $(VENV) build *.egg-info rnnchar.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
