# TaskDash — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= config/taskdash.toml

.PHONY: run test lint format check-config bench clean proto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/taskdash run --config $(CONFIG)

check-config: $(VENV)/.installed-run
	$(BIN)/taskdash check-config --config $(CONFIG)

test: $(VENV)/.installed-test
	$(BIN)/ruff check taskdash tests scripts
	$(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check taskdash tests scripts
	$(BIN)/ruff format --check taskdash tests scripts

format: $(VENV)/.installed-test
	$(BIN)/ruff format taskdash tests scripts

# Regenerate the periodic service's gRPC code from its .proto (the output is committed).
PROTO_DIR = taskdash/periodic/proto
proto: $(VENV)/.installed-test
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
		$(PROTO_DIR)/periodic_task.proto

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache
