# The two commands: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
export RECFUNNEL_CACHE ?= $(CURDIR)/.cache/recfunnel
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
VENV := .venv/bin
DEMO_DIR ?= .demo

.PHONY: setup demo lint test test-quick bench lock clean mlflow-ui

setup:
	@VARIANT=$(or $(VARIANT),cpu) scripts/setup.sh

demo: setup
	$(VENV)/recfunnel prepare movielens --variant ml-100k --out $(DEMO_DIR)/ml-100k --overwrite --quiet
	$(VENV)/recfunnel inspect $(DEMO_DIR)/ml-100k
	$(VENV)/recfunnel train --model two-tower --data $(DEMO_DIR)/ml-100k --out $(DEMO_DIR)/runs/two-tower --overwrite
	$(VENV)/recfunnel train --model dlrm --data $(DEMO_DIR)/ml-100k --retriever $(DEMO_DIR)/runs/two-tower --out $(DEMO_DIR)/runs/dlrm --overwrite
	$(VENV)/recfunnel index --run $(DEMO_DIR)/runs/two-tower --out $(DEMO_DIR)/index --overwrite
	$(VENV)/recfunnel evaluate --run $(DEMO_DIR)/runs/two-tower --ranker $(DEMO_DIR)/runs/dlrm --index $(DEMO_DIR)/index --mlflow
	$(VENV)/recfunnel recommend --run $(DEMO_DIR)/runs/two-tower --ranker $(DEMO_DIR)/runs/dlrm --index $(DEMO_DIR)/index --k 10 --user 196 --user 405 --user 655
	@echo "runs are in MLflow ($(MLFLOW_TRACKING_URI)): make mlflow-ui, then open http://127.0.0.1:5000"
	@echo "serve the funnel: .venv/bin/recfunnel serve --run $(DEMO_DIR)/runs/two-tower --ranker $(DEMO_DIR)/runs/dlrm --index $(DEMO_DIR)/index"

# The house rules: style and format, the layer contracts (pyproject.toml), types. Any failure fails `make test`.
lint: setup
	$(VENV)/ruff check src tests
	$(VENV)/ruff format --check src tests
	$(VENV)/lint-imports
	$(VENV)/mypy

test: lint
	$(VENV)/python -m pytest -q

test-quick: lint
	$(VENV)/python -m pytest -q -m "not slow"

bench: demo
	$(VENV)/recfunnel prepare synthetic --rows 1000000 --out $(DEMO_DIR)/bench-synthetic --overwrite --quiet
	$(VENV)/recfunnel bench data $(DEMO_DIR)/bench-synthetic
	$(VENV)/recfunnel bench train
	$(VENV)/recfunnel bench quality --work $(DEMO_DIR)/bench-quality
	$(VENV)/recfunnel prepare synthetic --rows 300000 --out $(DEMO_DIR)/bench-scale --overwrite --quiet
	$(VENV)/recfunnel bench scale $(DEMO_DIR)/bench-scale
	$(VENV)/recfunnel bench index
	$(VENV)/recfunnel bench serve --run $(DEMO_DIR)/runs/two-tower --ranker $(DEMO_DIR)/runs/dlrm --index $(DEMO_DIR)/index --workers 1 --workers 2

mlflow-ui: setup
	$(VENV)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

lock:
	scripts/lock.sh

clean:
	rm -rf .demo .pytest_cache mlruns .import_linter_cache .mypy_cache .ruff_cache
