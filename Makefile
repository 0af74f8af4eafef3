# Everything bootstraps .venv on first use (python3 -m venv + editable install with the dev
# extra), then reuses it until pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fixtures man clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench.py

fixtures: $(STAMP)
	$(BIN)/python fixtures/build.py

man: $(STAMP)
	man ./man/wasmstream.1

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
