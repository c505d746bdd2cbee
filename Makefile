# nbbridge: `make test` and `make demo` work on a fresh Debian machine with Python 3.11, git and make.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: all install test lint typecheck trial demo bench clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# A plain (non-editable) install, so the twistd plug-ins are found exactly as users get them.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml $(shell find src -name '*.py')
	$(BIN)/pip install -q '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	PYTHONPATH=src $(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict --untyped-calls-exclude twisted -p nbbridge.wire -p nbbridge.mux -p nbbridge.crypto -p nbbridge.store

trial: $(STAMP)
	PYTHONPATH=. $(BIN)/trial $(TRIAL_ARGS) tests

test: lint typecheck trial

demo: $(STAMP)
	$(BIN)/python -m nbbridge.demo $(DEMO_ARGS)

# Benchmarks measure time, so they stay out of `make test`; see bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python bench/mux_pipe.py
	$(BIN)/python bench/tunnel.py --json bench/results.json --markdown bench/RESULTS.md

clean:
	rm -rf $(VENV) build _trial_temp* .mypy_cache .ruff_cache .hypothesis
