# Two commands matter: `make run` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench cluster-test clean

setup: $(STAMP)

# Reinstall only when the project metadata changed, so `make setup` is a no-op in seconds otherwise.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/sweep run hw2

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not cluster" --durations=12

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/run.py

cluster-test: setup
	$(BIN)/python -m pytest -q -m cluster

clean:
	rm -rf $(VENV) ray_results sweep_results
