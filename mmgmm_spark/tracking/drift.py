"""Drift metrics of scoring runs against the training reference stored with the model.

A tracked fit logs its :class:`~mmgmm_spark.core.drift.DriftReference` as the artefact
``REFERENCE_ARTIFACT`` of its run (the run the registered model version comes from). Every
scoring run then logs, for the current scored population of its model version (the newest
score of every id in the output table, :func:`mmgmm_spark.spark.population.latest_scores`):

* ``drift.n_rows``, ``drift.fraction_over_threshold``;
* ``drift.quantile.<column>.<q>`` for the anomaly score and each ``<modality>_log_likelihood``;
* ``drift.psi.<column>``, ``drift.ks.<column>`` against the reference;
* ``drift.missing_share.<modality>`` and ``drift.missing_share_change.<modality>``.

A model trained before references existed has none: the scoring run is tagged
``drift.reference=missing`` and :class:`NoDriftReferenceError` says to retrain.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import TYPE_CHECKING

import mlflow

from mmgmm_spark.core.drift import DriftReference, ks_statistic, psi
from mmgmm_spark.core.errors import ConfigError
from mmgmm_spark.spark.population import Profile, latest_scores, monitored_columns, profile
from mmgmm_spark.tracking.config import TrackingConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mmgmm_spark.models.detector import AnomalyDetector

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "drift/reference.json"
PREFIX = "drift."


class NoDriftReferenceError(ConfigError):
    """The model version has no training reference (trained before drift monitoring)."""


def log_reference(reference: DriftReference) -> None:
    """Store ``reference`` with the active (training) run."""
    mlflow.log_dict(reference.to_dict(), REFERENCE_ARTIFACT)


def load_reference(config: TrackingConfig, name: str, version: str) -> DriftReference:
    """The reference of registered model ``name`` version ``version``."""
    client = config.client()
    run_id = client.get_model_version(name, version).run_id
    with tempfile.TemporaryDirectory() as directory:
        try:
            path = client.download_artifacts(run_id, REFERENCE_ARTIFACT, directory)
        except Exception:  # mlflow raises several types for a missing artefact
            raise NoDriftReferenceError(
                f"Model {name} version {version} (run {run_id}) has no training drift "
                f"reference ({REFERENCE_ARTIFACT}): it was trained before drift monitoring "
                "existed. Retrain it with `mmgmm train` to monitor drift."
            ) from None
        with open(os.path.join(directory, os.path.basename(path))
                  if os.path.isdir(path) else path) as f:
            return DriftReference.from_dict(json.load(f))


def drift_metrics(reference: DriftReference, current: Profile) -> dict[str, float]:
    """The ``drift.*`` metrics of ``current`` against ``reference`` (see module docstring)."""
    metrics = {"n_rows": current.n_rows,
               "fraction_over_threshold": current.fraction_over_threshold}
    for name, column in reference.columns.items():
        metrics[f"psi.{name}"] = psi(column.counts, current.counts[name])
        metrics[f"ks.{name}"] = ks_statistic(column.counts, current.counts[name])
        metrics |= {f"quantile.{name}.{q:g}": v for q, v in current.quantiles[name].items()}
    for modality, share in current.missing_share.items():
        metrics[f"missing_share.{modality}"] = share
        metrics[f"missing_share_change.{modality}"] = abs(
            share - reference.missing_share.get(modality, 0.0))
    return {PREFIX + key: float(value) for key, value in metrics.items()}


def log_scoring_drift(spark: SparkSession, config: TrackingConfig, detector: AnomalyDetector,
                      name: str, version: str, output_table: str, id_column: str,
                      engine: str) -> dict[str, float]:
    """Log the active scoring run's drift metrics (empty, tagged, without a reference)."""
    from pyspark.sql import functions as F

    from mmgmm_spark.models.scores import MODEL_NAME, MODEL_VERSION
    from mmgmm_spark.storage import read_table

    try:
        reference = load_reference(config, name, version)
    except NoDriftReferenceError as missing:
        log.warning("%s", missing)
        mlflow.set_tag("drift.reference", "missing")
        return {}
    scores = read_table(spark, output_table, engine=engine).df.where(
        (F.col(MODEL_NAME) == name) & (F.col(MODEL_VERSION) == str(version)))
    latest = latest_scores(scores, id_column).cache()  # profiled by a few Spark jobs
    try:
        current = profile(latest, reference, monitored_columns(detector))
    finally:
        latest.unpersist()
    metrics = drift_metrics(reference, current)
    mlflow.log_metrics(metrics)
    mlflow.set_tag("drift.reference", "present")
    return metrics
