"""Shared fixtures: one local Spark session per test run, and the optional ADBench data."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ADBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "adbench"


@pytest.fixture(scope="session")
def adbench_dir() -> Path:
    """``../shared/datasets/adbench``; tests that need it skip where it is absent."""
    if not ADBENCH.is_dir():
        pytest.skip(f"ADBench data not found at {ADBENCH} (only the development workspace has it)")
    return ADBENCH


@pytest.fixture(scope="session")
def spark():
    """A local[2] SparkSession shared by the whole run.

    Its JVM also loads Delta Lake's jars when they are available locally (``make install``),
    without Delta's extension (so ``storage.engine: auto`` stays delta-rs, as in the quick
    start): a JVM's classpath is fixed when it starts, and :func:`delta_spark` restarts the
    context with the extension in this same JVM.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from mmgmm_spark.spark.session import build_spark

    session = build_spark("local[2]", app_name="mmgmm-spark-tests", conf=_delta_jars_conf())
    yield session
    session.stop()


def _delta_jars_conf() -> dict[str, str]:
    from mmgmm_spark.spark.session import delta_jar_version, delta_package, local_delta_versions

    if delta_jar_version() not in local_delta_versions():
        return {}
    return {"spark.jars.packages": delta_package()}


@pytest.fixture(scope="session")
def delta_spark(request, tmp_path_factory):
    """A local[2] SparkSession with Delta Lake's connector (jars, extension, DeltaCatalog; a
    fresh ``spark_catalog`` warehouse), started once for the tests that ask for it.

    pyspark runs one JVM per process, so this restarts the shared session's context in the
    JVM that already loaded Delta's jars (tests using it run last, see
    ``pytest_collection_modifyitems``). Skipped, with the reason, when the jars are not
    available (``make install`` fetches them).
    """
    from pyspark import SparkContext

    from mmgmm_spark.spark.session import build_spark, delta_package

    running = SparkContext._active_spark_context is not None
    if running and not _delta_jars_conf():
        pytest.skip(f"Delta Lake jars {delta_package()} not available locally (run make install)")
    if running:
        request.getfixturevalue("spark").stop()
    warehouse = tmp_path_factory.mktemp("warehouse")
    try:
        session = build_spark("local[2]", app_name="mmgmm-spark-delta-tests", delta=True,
                              conf={"spark.sql.warehouse.dir": str(warehouse)})
    except Exception as exc:  # Spark's resolver could not download the jars either
        pytest.skip(f"Delta Lake jars {delta_package()} cannot be resolved: {exc}")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def connect_url(tmp_path_factory):
    """``sc://127.0.0.1:<free port>`` of one Spark Connect server for the whole run (local[2],
    Delta Lake's jars, extension and catalog; its Python workers import this checkout).

    Its tests run together, just before the Delta session's (``pytest_collection_modifyitems``).
    """
    from mmgmm_spark.spark.session import (
        DELTA_CONF,
        DELTA_LOCAL_DEFAULTS,
        LOCAL_DEFAULTS,
        delta_package,
    )
    from tests.spark_servers import start_connect_server

    conf = {**LOCAL_DEFAULTS, **DELTA_LOCAL_DEFAULTS, **DELTA_CONF,
            "spark.pyspark.python": sys.executable}
    server, url = start_connect_server(tmp_path_factory.mktemp("connect"), conf, delta_package())
    yield url
    server.stop()


def pytest_collection_modifyitems(items):
    """Tests on the Delta session run after all others (it replaces the shared session), and
    the Spark Connect server's tests run together just before them (the one on both first)."""

    def order(item) -> int:
        names = getattr(item, "fixturenames", ())
        delta, connect = "delta_spark" in names, "connect_url" in names
        return 2 * delta + (connect != delta)  # others, Connect, both, Delta session only

    items.sort(key=order)


def local_tracking(tmp_path_factory, name: str):
    """A TrackingConfig on a fresh SQLite store (experiment ``name``, nothing registered)."""
    from mmgmm_spark.tracking import TrackingConfig

    work = tmp_path_factory.mktemp(name)
    copy_empty_mlflow_store(work, tmp_path_factory)
    return TrackingConfig(work_dir=str(work), tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                          experiment=name, registered_model_name=None)


def copy_empty_mlflow_store(work_dir: Path, tmp_path_factory) -> None:
    """``work_dir/mlflow.db``: a copy of an initialised empty store (creating the tables of a
    new SQLite store takes many seconds; the template is made once per test session)."""
    from mlflow import MlflowClient

    template = tmp_path_factory.getbasetemp() / "mlflow-template" / "mlflow.db"
    if not template.exists():
        template.parent.mkdir(exist_ok=True)
        uri = f"sqlite:///{template}"
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, work_dir / "mlflow.db")

