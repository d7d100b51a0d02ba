# The README's two commands: `make quickstart` and `make test`. Re-running installs nothing new:
# installs are recorded in stamp files that are only redone when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
# Quickstart config; override e.g. `make quickstart QUICKSTART_ARGS="--set train.steps=50"`.
QUICKSTART_ARGS ?=

DOCS_INSTALLED := $(VENV)/.installed-docs

.PHONY: quickstart test bench docs clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_INSTALLED): pyproject.toml $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

quickstart: $(INSTALLED)
	$(BIN)/mtjax train --config=configs/quickstart.py $(QUICKSTART_ARGS)

# Two workers (pytest-xdist): CI has two cores. `--dist loadscope` keeps a module on one worker, so
# a module-scoped fixture (a set of training runs) is built once, not once per worker.
# `make test PYTEST_ARGS=` runs in one process.
PYTEST_ARGS ?= -n 2 --dist loadscope --durations=15

test: $(TEST_INSTALLED)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The documentation site into site/ (open site/index.html); `make test` builds it with --strict.
$(DOCS_INSTALLED): pyproject.toml $(INSTALLED)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

docs: $(DOCS_INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

bench: $(INSTALLED)
	@ls scripts/bench_*.py >/dev/null 2>&1 || { echo "no benchmarks yet (scripts/bench_*.py)"; exit 0; }
	@for s in scripts/bench_*.py; do echo "== $$s"; $(BIN)/python $$s || exit 1; done

clean-venv:
	rm -rf $(VENV)
