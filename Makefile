# Fresh machine, two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DVC stage commands call `mirage`; make the venv's console scripts visible to them.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-fast lint smoke bench experiments clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned, so no dependency pulls a CUDA build on CPU machines
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# lmms-eval (general-capability benchmarks) in its own environment: its pins (wandb,
# protobuf < 7, a CUDA torchvision) clash with ours; `mirage evaluate` runs it as a command
LMMS_VENV := .venv-lmms
LMMS_STAMP := $(LMMS_VENV)/.installed
$(LMMS_STAMP): constraints-lmms.txt
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/pip install --quiet --upgrade pip
	$(LMMS_VENV)/bin/pip install --quiet -c constraints-lmms.txt torch
	$(LMMS_VENV)/bin/pip install --quiet -c constraints-lmms.txt lmms-eval
	# the torchvision paired with torch 2.13 on the index is a CUDA build: it breaks imports
	$(LMMS_VENV)/bin/pip uninstall --yes --quiet torchvision
	touch $(LMMS_STAMP)

setup: $(STAMP) $(LMMS_STAMP)

run: setup
	$(BIN)/dvc repro
	$(BIN)/mirage summary

smoke: setup
	MIRAGE_PROFILE=smoke $(BIN)/dvc repro

# two workers, each test file on one of them (its module fixtures built once): the suite is
# mostly subprocesses and servers, ~8 min on 2 cores instead of ~12.5 serially
test: setup
	$(BIN)/ruff check src tests benchmarks $(wildcard flows)
	$(BIN)/ruff format --check src tests benchmarks $(wildcard flows)
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n 2 --dist loadfile

# the unit tests (every test not marked slow or e2e): under two minutes on 2 cores
test-fast: setup
	$(BIN)/pytest -q -n 2 -m "not slow and not e2e"

lint: setup
	$(BIN)/ruff check src tests benchmarks $(wildcard flows)
	$(BIN)/ruff format --check src tests benchmarks $(wildcard flows)
	$(BIN)/lint-imports
	$(BIN)/mypy

# The teacher-noise / label-style experiments of the README, each over three training seeds,
# as DVC experiments, then one table (reports/experiments.md): `make experiments`.
SEEDS ?= 1234 1 2
NOISE = -S label.noise.wrong_object=$(1) -S label.noise.wrong_rule=$(1) \
        -S label.noise.comply=$(1) -S label.noise.truncated=$(1)
EXPERIMENTS = noisy-nofilter:"-S label.style=policy $(call NOISE,0.075) -S curate.judge=none" \
              noisy-filter:"-S label.style=policy $(call NOISE,0.075) -S curate.judge=world" \
              clean-policy:"-S label.style=policy $(call NOISE,0)" \
              clean-cot:"-S label.style=cot $(call NOISE,0)" \
              default:""
experiments: setup
	@for spec in $(EXPERIMENTS); do name=$${spec%%:*}; args=$${spec#*:}; args=$${args//\"/}; \
	  for s in $(SEEDS); do \
	    $(BIN)/dvc exp remove -q $$name-s$$s 2>/dev/null || true; \
	    echo "== $$name-s$$s"; \
	    $(BIN)/dvc exp run --temp -q -n $$name-s$$s $$args -S train.seed=$$s || exit 1; \
	  done; done
	$(BIN)/mirage report --only '^(noisy|clean|default)-'

bench: setup
	$(BIN)/python benchmarks/generate_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
