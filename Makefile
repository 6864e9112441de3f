# Two commands do everything on a fresh machine:
#   make run    venv + install + `zenml init` + the quickstart pipeline on the local ZenML stack
#   make test   venv + install + lint (ruff) + the test suite (CI runs this)
# and, while developing, `make test-fast`: lint + the tests that run no pipeline, server or browser
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml
export ZENML_ANALYTICS_OPT_IN ?= false
export TF_CPP_MIN_LOG_LEVEL ?= 2
# the browser the serving page test drives (Playwright from pip; its own browser download is not used)
export BLOODCELL_CHROMIUM ?= /usr/bin/chromium

GPUS ?= [0]

.PHONY: install run lint browser test test-fast train-cpu benchmark stack-gpu-local clean

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
	$(BIN)/ruff format --check .

# Debian's chromium, for tests/test_serving_e2e.py's page test; where it cannot be installed, that
# one test is skipped (saying why) and everything else runs
browser:
	@if [ -x "$(BLOODCELL_CHROMIUM)" ]; then echo "browser: $(BLOODCELL_CHROMIUM)"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "browser: no apt-get here, so no chromium: the serving page test will be skipped (BLOODCELL_CHROMIUM=/path/to/chromium to use one)"; \
	else \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  echo "browser: installing Debian's chromium with apt-get"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; } \
	    || echo "browser: apt-get could not install chromium: the serving page test will be skipped"; \
	fi

# TEST_WORKERS processes, each taking whole test files (module fixtures such as a trained run are
# built once), with their own throw-away ZenML store; the 25 slowest tests are listed at the end
TEST_WORKERS ?= 2
test: lint browser .zen
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

# the slow kinds are pytest markers (pyproject.toml): whole pipeline runs, servers, the browser;
# the rest runs in FAST_WORKERS processes (pytest-xdist; its workers find ZenML's source root
# through .zen, having no main file of their own)
FAST_WORKERS ?= 2
test-fast: lint .zen
	$(BIN)/python -m pytest -n $(FAST_WORKERS) -m "not pipeline and not server and not browser"

benchmark: $(STAMP) .zen
	$(BIN)/python benchmarks/pipeline_timing.py

# A stack whose step operator `gpu` runs steps in local processes, one GPU each from $(GPUS).
stack-gpu-local: $(STAMP) .zen
	$(BIN)/zenml step-operator flavor register bloodcell.mlops.step_operator.LocalGPUStepOperatorFlavor
	$(BIN)/zenml step-operator register gpu --flavor=local_gpu --gpus='$(GPUS)'
	$(BIN)/zenml stack register gpu-local -o default -a default -s gpu --set

clean:
	rm -rf $(VENV) .zen .pytest_cache
