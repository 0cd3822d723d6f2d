# Set-up is part of every target: on a fresh machine `make demo` or `make test` creates .venv and installs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

lint: setup
	$(BIN)/ruff check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q --durations=25

demo: setup
	$(BIN)/c3d demo

bench: setup
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
