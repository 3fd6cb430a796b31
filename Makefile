# The two quick-start commands: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: install install-dev demo test lint

install:
	$(PYTHON) -m pip install --quiet -e .

install-dev:
	$(PYTHON) -m pip install --quiet -e ".[dev]"

demo: install
	$(PYTHON) -m mmgmm_spark demo

test: install-dev
	$(PYTHON) -m ruff check mmgmm_spark jobs tests
	$(PYTHON) -m pytest -q -ra

lint: install-dev
	$(PYTHON) -m ruff check mmgmm_spark jobs tests
