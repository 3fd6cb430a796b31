"""Shared fixtures: one local Spark session per test run, and the optional ADBench data."""

from __future__ import annotations

import os
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
