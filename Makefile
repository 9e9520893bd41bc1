# Two commands matter: `make run` and `make test`. Both create the virtualenv on first use.
# CI runs `env -i CI=true .ci/run`: no PATH in the environment, and programs make starts need one (python3
# finds itself through it, apt-get's dpkg refuses to run without it).
export PATH := $(if $(PATH),$(PATH),/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver

.PHONY: setup run test lint bench cluster-test clean browser

setup: $(STAMP)

# Reinstall only when the project metadata changed, so `make setup` is a no-op in seconds otherwise.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/sweep run hw2

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not cluster" --durations=12

# tests/sweep/test_ui.py drives the MLflow UI in Debian's chromium: install it when we can (root with apt), else stop
# with one line saying how. The test is never skipped.
browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver (apt-get) for tests/sweep/test_ui.py"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
	  echo "make test: tests/sweep/test_ui.py needs chromium: sudo apt-get install -y chromium chromium-driver" >&2; exit 1; \
	fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/run.py

cluster-test: setup
	$(BIN)/python -m pytest -q -m cluster

clean:
	rm -rf $(VENV) ray_results sweep_results
