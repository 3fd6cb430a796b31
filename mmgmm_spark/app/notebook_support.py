"""What the Databricks notebooks in ``notebooks/`` call: they import this module and
:mod:`mmgmm_spark.app.pipeline` only.

On Databricks ``dbutils`` and ``spark`` are predefined in the notebook; elsewhere
:func:`widget` returns the default and :func:`spark_for` builds a session through
:func:`mmgmm_spark.spark.session.build_spark` (the one place that builds a SparkSession).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mmgmm_spark.app import pipeline
from mmgmm_spark.app.config import AppConfig, load_config
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.spark.arrow import batch_from_arrow
from mmgmm_spark.storage import read_table
from mmgmm_spark.tracking import load_detector, tracking
from mmgmm_spark.tracking.plots import component_weights, score_histogram
from mmgmm_spark.tracking.registry import resolve_registered

__all__ = ["Champion", "component_weights", "feature_arrays", "load_champion",
           "load_notebook_config", "parse_overrides", "sample_scores", "score_histogram",
           "scoring_run_rows", "spark_for", "widget"]


def _dbutils() -> Any | None:
    """Databricks' ``dbutils`` when running in a Databricks notebook, else None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None:
        return None
    return shell.user_ns.get("dbutils")


def widget(name: str, default: str, label: str | None = None) -> str:
    """A text parameter: ``dbutils.widgets.text`` + ``get`` on Databricks, else ``default``."""
    dbutils = _dbutils()
    if dbutils is None:
        return default
    dbutils.widgets.text(name, default, label or name)
    return dbutils.widgets.get(name)


def parse_overrides(text: str) -> list[str]:
    """``"model.n_components=4; work_dir=/tmp/x"`` (``;`` or newlines) as ``--set`` items."""
    return [item.strip() for item in re.split(r"[;\n]", text or "") if item.strip()]


def load_notebook_config(path: str, overrides: str = "") -> AppConfig:
    """:func:`mmgmm_spark.app.config.load_config` with the overrides widget's text."""
    return load_config(path, parse_overrides(overrides))


def spark_for(config: AppConfig) -> SparkSession:
    """The session for a notebook that has no predefined ``spark``."""
    return pipeline.spark_session(config)


@dataclass(frozen=True)
class Champion:
    """The registered detector at the configured model URI, and which version it is."""

    uri: str
    name: str
    version: str
    detector: AnomalyDetector

    @property
    def mixtures(self) -> dict[str, Any]:
        """The mixture(s) inside: {"joint": m} for a plain mixture; a FusionModel's
        ``mixtures_`` ("joint", "early", or one per modality for late) otherwise."""
        return getattr(self.detector.model, "mixtures_", {"joint": self.detector.model})


def load_champion(config: AppConfig) -> Champion:
    """Resolve ``config.model_uri()`` in the registry and load that version's detector."""
    settings = pipeline.tracking_config(config)
    with tracking(settings):
        name, version = resolve_registered(settings.client(), config.model_uri())
        detector = load_detector(f"models:/{name}/{version}")
    return Champion(config.model_uri(), name, str(version), detector)


def sample_scores(spark: SparkSession, config: AppConfig, detector: AnomalyDetector,
                  rows: int) -> dict[str, np.ndarray]:
    """The detector's output columns for the first ``rows`` joined feature rows, each (n,)."""
    features = pipeline.read_features(spark, config)
    names = [m.name for m in detector.modalities]
    sample = features.df.select(*names).limit(rows).toArrow()
    return detector.score_batch(batch_from_arrow(sample, tuple(detector.modalities), "sample"))


def scoring_run_rows(spark: SparkSession, config: AppConfig, table: str,
                     scoring_run_id: str) -> DataFrame:
    """The rows one scoring run wrote to the output table."""
    return (read_table(spark, table, engine=config.storage.engine).df
            .where(F.col("scoring_run_id") == scoring_run_id))


def feature_arrays(spark: SparkSession, config: AppConfig, table: str,
                   ids: np.ndarray) -> dict[str, np.ndarray]:
    """{column: (n, width)} of the array columns (``responsibilities``, ``fisher_vector``) of
    a features table (``mmgmm features``), rows in the order of ``ids`` (n,). Brings those
    rows to the driver: for notebook-sized selections."""
    id_column, names = config.data.id_column, ("responsibilities", "fisher_vector")
    rows = (read_table(spark, table, engine=config.storage.engine).df
            .where(F.col(id_column).isin(np.asarray(ids).tolist()))
            .select(id_column, *names))
    frame = rows.toPandas().set_index(id_column).loc[list(ids)]
    return {name: np.stack(frame[name].to_numpy()) for name in names}
