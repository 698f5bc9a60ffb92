# TaskDash — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= config/taskdash.toml

.PHONY: run test lint format check-config bench clean coverage-report mutation proto demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-mutation: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet -e '.[test,mutation]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/taskdash run --config $(CONFIG)

# Everything on this machine, with simulated task services (docs/demo.md); Ctrl-C stops it.
demo: $(VENV)/.installed-run
	$(BIN)/taskdash demo $(DEMO_ARGS)

check-config: $(VENV)/.installed-run
	$(BIN)/taskdash check-config --config $(CONFIG)

# Coverage of the tests and of every Python subprocess they start (config: pyproject.toml,
# [tool.coverage.*]); the report fails under its fail_under floor.
# TEST_WORKERS pytest processes (pytest-xdist; each starts its own nx-27017), measured like any
# other subprocess; TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 2

test: $(VENV)/.installed-test
	$(BIN)/ruff check taskdash tests scripts
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=15 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory coverage-report

coverage-report: $(VENV)/.installed-test
	$(if $(wildcard .coverage.*),$(BIN)/coverage combine --quiet)
	$(BIN)/coverage report

# Mutation testing (slow, not in CI): `make mutation` over the modules listed in pyproject.toml
# [tool.mutmut], or one of them: `make mutation MODULE=taskdash/checker.py`. Results stay in
# mutants/ (a later run only tests what changed); `.venv/bin/mutmut show NAME` shows a survivor.
# Score = mutants killed (a test failed, or it timed out) / mutants tried.
MODULE ?=
MUTANTS = $(if $(MODULE),$(subst /,.,$(basename $(MODULE))).*,taskdash.*)
mutation: $(VENV)/.installed-mutation
	$(BIN)/mutmut run --max-children 2 "$(MUTANTS)"
	@$(BIN)/mutmut results --all true | awk -F': ' -v prefix="$(basename $(MUTANTS))" \
	  '{ sub(/^ +/, "", $$1) } index($$1, prefix) == 1 { n[$$2]++; total++ } \
	   END { for (s in n) printf "  %-12s %d\n", s, n[s]; \
	         printf "mutation score %s: %.1f%% (%d of %d killed)\n", prefix, \
	           100 * (n["killed"] + n["timeout"]) / total, n["killed"] + n["timeout"], total }'

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
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache .coverage .coverage.* htmlcov mutants .hypothesis
