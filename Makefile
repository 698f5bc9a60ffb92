# TaskDash — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= config/taskdash.toml

.PHONY: run test lint format check-config bench clean coverage-report mutation

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

# Coverage of the tests and of every Python subprocess they start (config: pyproject.toml,
# [tool.coverage.*]); the report fails under its fail_under floor.
test: $(VENV)/.installed-test
	$(BIN)/ruff check taskdash tests scripts
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory coverage-report

coverage-report: $(VENV)/.installed-test
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

lint: $(VENV)/.installed-test
	$(BIN)/ruff check taskdash tests scripts
	$(BIN)/ruff format --check taskdash tests scripts

format: $(VENV)/.installed-test
	$(BIN)/ruff format taskdash tests scripts

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache .coverage .coverage.* htmlcov mutants
