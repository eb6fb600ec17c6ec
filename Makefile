# The two commands of the README. Both create .venv on first use (torch CPU wheel first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export MLFLOW_ENABLE_TELEMETRY := false

.PHONY: demo test test-fast env lint clean

demo: $(STAMP)  ## run hamnet-optimize on the built-in digits default
	$(BIN)/hamnet run configs/default.yaml

test: $(STAMP)  ## run the whole test suite (lint, types, unit, integration)
	$(BIN)/python -m pytest -ra

test-fast: $(STAMP)  ## the unit tier only (no Prefect/MLflow/Ray processes, no mypy): < 3 min
	$(BIN)/python -m pytest -q -m "not integration and not slow" tests/unit

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# onnx2torch (ONNX -> PyTorch, to prune an ONNX model) declares torchvision, whose PyPI
	# wheel is a CUDA build that fails to import with the CPU torch; it needs torchvision
	# only for two operators (NMS, RoiAlign), so it is installed without it.
	$(BIN)/pip install --quiet --no-deps 'onnx2torch==1.5.15'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

clean:
	rm -rf .hamnet mlruns mlartifacts mlflow.db .stack
