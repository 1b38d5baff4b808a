# Two commands on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Runtime install, redone when the requirements change.
$(VENV)/.installed: $(BIN)/python requirements.txt requirements-cli.txt pyproject.toml
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-cli.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

## Serve the whole function app on http://127.0.0.1:$${PORT:-7071}, local backend, data in ./.data
run: $(VENV)/.installed
	$(BIN)/stowage serve

## Everything: infrastructure checks, then the whole suite on local, Azurite and moto
test: $(VENV)/.installed-dev node_modules/.installed lint typecheck
	$(BIN)/python -m pytest

lint:
	bash scripts/lint-infra.sh

## Type check (mypy; what and how strictly: [tool.mypy] in pyproject.toml)
typecheck: $(VENV)/.installed-dev
	$(BIN)/python -m mypy

bench: $(VENV)/.installed-dev node_modules/.installed
	$(BIN)/python bench/backends.py

clean:
	rm -rf $(VENV) .venv-lint node_modules .data .pytest_cache .mypy_cache
