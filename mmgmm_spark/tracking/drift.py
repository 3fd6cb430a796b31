"""Drift metrics of scoring runs against the training reference stored with the model.

A tracked fit logs its :class:`~mmgmm_spark.core.drift.DriftReference` as the artefact
``REFERENCE_ARTIFACT`` of its run (the run the registered model version comes from). Every
scoring run then logs, for the current scored population of its model version (the newest
score of every current entity; see :func:`log_scoring_drift` for how an incremental run
gets it without reading the whole output table), and stores that population's
:class:`~mmgmm_spark.core.drift.Profile` as ``PROFILE_ARTIFACT``:

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow

from mmgmm_spark.core.drift import DriftReference, Profile, empty_profile, ks_statistic, psi
from mmgmm_spark.core.errors import ConfigError
from mmgmm_spark.spark.population import latest_scores, monitored_columns, profile
from mmgmm_spark.tracking.config import TrackingConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from mmgmm_spark.models.detector import AnomalyDetector
    from mmgmm_spark.spark.score import ScoringResult

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "drift/reference.json"
PROFILE_ARTIFACT = "drift/population.json"
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


def drift_metrics(reference: DriftReference, current: Profile,
                  modalities: dict[str, str | None]) -> dict[str, float]:
    """The ``drift.*`` metrics of ``current`` against ``reference`` (see module docstring);
    ``modalities``: :func:`monitored_columns`."""
    metrics = {"n_rows": current.n_rows,
               "fraction_over_threshold": current.fraction_over_threshold()}
    for name, column in reference.columns.items():
        metrics[f"psi.{name}"] = psi(column.counts, current.bins(name))
        metrics[f"ks.{name}"] = ks_statistic(column.counts, current.bins(name))
        if current.n_rows:
            metrics |= {f"quantile.{name}.{q:g}": v
                        for q, v in current.quantiles(name, reference).items()}
    for name, modality in modalities.items():
        if modality is None:
            continue
        share = current.missing_share(name)
        metrics[f"missing_share.{modality}"] = share
        metrics[f"missing_share_change.{modality}"] = abs(
            share - reference.missing_share.get(modality, 0.0))
    return {PREFIX + key: float(value) for key, value in metrics.items()}


@dataclass(frozen=True)
class PopulationChange:
    """How an incremental scoring run changed the scored population of its base run.

    Attributes:
        base_run_id: the scoring run whose population (its ``PROFILE_ARTIFACT``) changed.
        old_rows: the changed entities' input rows (id + one column per modality) at the
            table versions the base run read, or None when nothing changed; the entities'
            scores then are these rows' scores under the same model version.
    """

    base_run_id: str
    old_rows: DataFrame | None


@dataclass(frozen=True)
class ScoredPopulation:
    """Where a scoring run's scores are: model ``name`` / ``version``, the output table (its
    ``id_column``, the storage ``engine``) and what the run wrote (None: nothing)."""

    name: str
    version: str
    output_table: str
    id_column: str
    engine: str
    written: ScoringResult | None


def log_scoring_drift(spark: SparkSession, config: TrackingConfig, detector: AnomalyDetector,
                      scored: ScoredPopulation, change: PopulationChange | None
                      ) -> dict[str, float]:
    """Log the active scoring run's drift metrics and its population's profile
    (``PROFILE_ARTIFACT``); empty and tagged without a reference.

    The population is the current entities' newest scores under the run's model version:
    for a full run (``change`` None) the rows it wrote; for an incremental run the base
    run's profile, minus the changed entities' old scores, plus the rows it wrote. So an
    incremental run reads only the rows it wrote and the changed entities' old rows.
    """
    try:
        reference = load_reference(config, scored.name, scored.version)
    except NoDriftReferenceError as missing:
        log.warning("%s", missing)
        mlflow.set_tag("drift.reference", "missing")
        return {}
    current = _population(spark, config, detector, reference, scored, change)
    metrics = drift_metrics(reference, current, monitored_columns(detector))
    mlflow.log_metrics(metrics)
    mlflow.log_dict(current.to_dict(), PROFILE_ARTIFACT)
    mlflow.set_tag("drift.reference", "present")
    return metrics


def _population(spark: SparkSession, config: TrackingConfig, detector: AnomalyDetector,
                reference: DriftReference, scored: ScoredPopulation,
                change: PopulationChange | None) -> Profile:
    """The profile :func:`log_scoring_drift` describes."""
    from pyspark.sql import functions as F

    from mmgmm_spark.models.scores import MODEL_NAME, MODEL_VERSION, SCORING_RUN_ID
    from mmgmm_spark.spark.score import score_dataframe
    from mmgmm_spark.storage import read_table

    scores = read_table(spark, scored.output_table, engine=scored.engine).df
    written = scored.written
    new = (empty_profile(reference) if written is None else
           profile(scores.where(F.col(SCORING_RUN_ID) == written.scoring_run_id), reference))
    if change is None:
        return new
    base = _base_profile(config, change.base_run_id)
    if base is None:  # a base run logged before profiles: its population, read whole
        log.info("Scoring run %s has no %s: profiling the output table's newest scores",
                 change.base_run_id, PROFILE_ARTIFACT)
        own = scores.where((F.col(MODEL_NAME) == scored.name)
                           & (F.col(MODEL_VERSION) == str(scored.version)))
        return profile(latest_scores(own, scored.id_column), reference)
    if change.old_rows is not None:
        old = score_dataframe(change.old_rows, detector, id_column=scored.id_column)
        base = base.plus(profile(old, reference), sign=-1)
    return base.plus(new)


def _base_profile(config: TrackingConfig, run_id: str) -> Profile | None:
    """The profile logged by scoring run ``run_id``, or None if it logged none."""
    with tempfile.TemporaryDirectory() as directory:
        try:
            path = config.client().download_artifacts(run_id, PROFILE_ARTIFACT, directory)
        except Exception:  # mlflow raises several types for a missing artefact
            return None
        with open(path) as f:
            return Profile.from_dict(json.load(f))
