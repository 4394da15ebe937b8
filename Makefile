# The two commands a new user needs: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LAB := PYTHONPATH=lab $(BIN)/python -m azurelab

.PHONY: demo test venv lab-up lab-down lab-reset lab-status unit integration sanity molecule clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-lab.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-lab.txt
	touch $@

lab-up: venv
	$(LAB) up
lab-down: venv
	$(LAB) down
lab-reset: venv
	$(LAB) reset
lab-status: venv
	$(LAB) status

# Tests: unit (no lab), then the lab-backed integration tests, then ansible-test sanity.
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
unit: venv
	$(PYTEST) -q tests/unit

test: unit
