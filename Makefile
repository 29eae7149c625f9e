# Fresh machine, two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DVC stage commands call `mirage`; make the venv's console scripts visible to them.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test lint smoke bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned, so no dependency pulls a CUDA build on CPU machines
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/dvc repro
	$(BIN)/mirage summary

smoke: setup
	MIRAGE_PROFILE=smoke $(BIN)/dvc repro

test: setup
	$(BIN)/ruff check src tests benchmarks $(wildcard flows)
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks $(wildcard flows)
	$(BIN)/ruff format --check src tests benchmarks $(wildcard flows)

bench: setup
	$(BIN)/python benchmarks/generate_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
