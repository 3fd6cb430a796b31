"""Batch scoring with a registered model, recorded as an MLflow run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlflow

from mmgmm_spark.core.errors import ConfigError
from mmgmm_spark.spark.score import ScoringResult, score_to_delta
from mmgmm_spark.tracking.config import TrackingConfig, tracking
from mmgmm_spark.tracking.drift import PopulationChange, ScoredPopulation, log_scoring_drift
from mmgmm_spark.tracking.fit import table_params
from mmgmm_spark.tracking.pyfunc import load_detector
from mmgmm_spark.tracking.registry import resolve_registered

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from mmgmm_spark.models.detector import AnomalyDetector


@dataclass(frozen=True)
class RegisteredDetector:
    """A registered model version, resolved from a URI and loaded."""

    name: str
    version: str
    detector: AnomalyDetector


def load_registered(config: TrackingConfig, model_uri: str) -> RegisteredDetector:
    """Resolve ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` once and load it."""
    name, version = resolve_registered(config.client(), model_uri)
    return RegisteredDetector(name, version, load_detector(f"models:/{name}/{version}"))


def score_registered(spark: SparkSession, df: DataFrame | None, table: str, model_uri: str, *,
                     config: TrackingConfig | None = None, scoring_run_id: str | None = None,
                     table_versions: Mapping[str, Any] | None = None,
                     registered: RegisteredDetector | None = None,
                     extra_params: Mapping[str, Any] | None = None,
                     extra_metrics: Mapping[str, float] | None = None,
                     population_change: PopulationChange | None = None,
                     **score_options: Any) -> ScoringResult | None:
    """Score ``df`` with the model at ``model_uri`` and write the scores to Delta ``table``.

    ``model_uri`` is ``models:/<name>@<alias>`` or ``models:/<name>/<version>``; the alias is
    resolved once, so every row is scored by the same version. Without ``scoring_run_id`` a
    new MLflow run (named ``scoring``) is started and its id tags the rows; passing the id of
    an earlier scoring run re-runs it, replacing its rows (the run is resumed). The run
    records model name/version, the input table versions and the output table version.

    ``registered``: the model already loaded from ``model_uri`` (:func:`load_registered`),
    so a caller that inspected it does not load it twice. ``df`` None: nothing to score (an
    incremental run without changes): the run is recorded, nothing is written and None is
    returned. ``extra_params`` / ``extra_metrics``: logged to the run too (incremental
    scoring's mode, base run and counts). ``population_change``: how an incremental run
    changed its base run's population (drift metrics, :func:`log_scoring_drift`).
    ``score_options``: ``id_column``,
    ``responsibilities``, ``engine`` of :func:`mmgmm_spark.spark.score.score_to_delta`.
    """
    config = config or TrackingConfig()
    with tracking(config) as experiment_id:
        registered = registered or load_registered(config, model_uri)
        name, version, detector = registered.name, registered.version, registered.detector
        run_args = {"run_id": scoring_run_id} if scoring_run_id else {
            "experiment_id": experiment_id, "run_name": "scoring"}
        params, tags = table_params(table_versions or {})
        params = {"model_uri": model_uri, "model_name": name, "model_version": version,
                  "output_table": table, **params, **(extra_params or {})}
        if scoring_run_id:
            _check_same_inputs(config, scoring_run_id, params)
        with mlflow.start_run(**run_args) as run:
            mlflow.log_params(params)
            mlflow.set_tags(tags)
            mlflow.log_metrics(dict(extra_metrics or {}))
            result = None if df is None else score_to_delta(
                spark, df, table, detector, model_name=name, model_version=version,
                scoring_run_id=run.info.run_id, **score_options)
            if result is not None:
                mlflow.log_metric("output_table_version", result.version)
            scored = ScoredPopulation(name, version, table, score_options.get("id_column", "id"),
                                      score_options.get("engine", "auto"), result)
            log_scoring_drift(spark, config, detector, scored, population_change)
            return result


def _check_same_inputs(config: TrackingConfig, scoring_run_id: str,
                       params: Mapping[str, Any]) -> None:
    """A re-run must score with the model and input versions the run recorded."""
    recorded = config.client().get_run(scoring_run_id).data.params
    changed = {key: (recorded[key], str(value)) for key, value in params.items()
               if key in recorded and recorded[key] != str(value)}
    if changed:
        listed = "; ".join(f"{key} was {old!r}, now {new!r}"
                           for key, (old, new) in changed.items())
        raise ConfigError(
            f"Scoring run {scoring_run_id} cannot be re-run with other inputs ({listed}). "
            "Pin what it used (a models:/<name>/<version> URI, the table versions), or start "
            "a new scoring run without --scoring-run-id."
        )
