# Two commands do everything on a fresh machine:
#   make run    venv + install + `zenml init` + the quickstart pipeline on the local ZenML stack
#   make test   venv + install + lint (ruff) + the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml
export ZENML_ANALYTICS_OPT_IN ?= false
export TF_CPP_MIN_LOG_LEVEL ?= 2

GPUS ?= [0]

.PHONY: install run lint test train-cpu benchmark stack-gpu-local clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (this project needs Python 3.11; set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

.zen: | $(STAMP)
	$(BIN)/zenml init

run: $(STAMP) .zen
	$(BIN)/zenml pipeline run pipelines.training.training_pipeline -c $(CONFIG)

train-cpu:
	$(MAKE) run CONFIG=configs/train_cpu.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

benchmark: $(STAMP) .zen
	$(BIN)/python benchmarks/pipeline_timing.py

# A stack whose step operator `gpu` runs steps in local processes, one GPU each from $(GPUS).
stack-gpu-local: $(STAMP) .zen
	$(BIN)/zenml step-operator flavor register bloodcell.mlops.step_operator.LocalGPUStepOperatorFlavor
	$(BIN)/zenml step-operator register gpu --flavor=local_gpu --gpus='$(GPUS)'
	$(BIN)/zenml stack register gpu-local -o default -a default -s gpu --set

clean:
	rm -rf $(VENV) .zen .pytest_cache
