"""Shared fixtures: one local Spark session per test run, and the optional ADBench data."""

from __future__ import annotations

import os
import shutil
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
    """A local[2] SparkSession shared by the whole run."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from mmgmm_spark.spark.session import build_spark

    session = build_spark("local[2]", app_name="mmgmm-spark-tests")
    yield session
    session.stop()


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
