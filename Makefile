# The two quick-start commands: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: install install-dev demo test lint

# Delta Lake's Spark connector jars (for storage.engine: delta-spark) are prefetched into the
# local Maven repository with mvn when it is installed, else by Spark's own resolver; best
# effort, never fails the install (see mmgmm_spark/spark/session.py).
PREFETCH_DELTA = $(PYTHON) -c "from mmgmm_spark.spark.session import prefetch_delta_jars as p; print(p())"

install:
	$(PYTHON) -m pip install --quiet -e .
	$(PREFETCH_DELTA)

install-dev:
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	$(PREFETCH_DELTA)

demo: install
	$(PYTHON) -m mmgmm_spark demo

test: install-dev
	$(PYTHON) -m ruff check mmgmm_spark jobs tests
	$(PYTHON) -m pytest -q -ra

lint: install-dev
	$(PYTHON) -m ruff check mmgmm_spark jobs tests
