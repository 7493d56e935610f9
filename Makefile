# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   - creates .venv, installs tfdialogpt, runs the main job
#   make test   - creates .venv with the test extra, runs ruff (lint + format check) and the whole test suite
#   make test-fast - the inner loop: lint, and the tests on tiny configs only (not the `slow` ones)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The suite runs in 2 processes (pytest-xdist; the machines have 2 cores, and a test waiting on
# a server or a notebook subprocess leaves one idle), a test file per process at a time, so a
# file's module-scoped exports are built once. `make test TEST_WORKERS=0` runs it in one.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

.PHONY: demo test test-fast format lint bench-generate bench-train bench-serve bench-hostile bench-data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/tfdialogpt demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: lint
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

bench-generate: $(VENV)/.installed-test
	$(BIN)/python benchmarks/generate.py

bench-train: $(VENV)/.installed-test
	$(BIN)/python benchmarks/train.py

bench-serve: $(VENV)/.installed-test
	$(BIN)/python benchmarks/serve.py

bench-hostile: $(VENV)/.installed-test
	$(BIN)/python benchmarks/hostile.py

bench-data: $(VENV)/.installed-test
	$(BIN)/python benchmarks/data.py

clean:
	rm -rf $(VENV) .cache build *.egg-info .pytest_cache .ruff_cache
