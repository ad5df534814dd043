# `make demo` runs the main job, `make test` the whole check (lint, types, tests).
# Both install what they need first (scripts/setup.sh).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edvit-installed

.PHONY: setup demo test lint format bench clean

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/edvit demo

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
